package fleet

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func procSpec(vol string) Spec {
	return Spec{Volume: "mem:///" + vol, Runtime: RuntimeProcess, Args: []string{"/bin/true"}}
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want string // substring of the error, "" for valid
	}{
		{"process", procSpec("v"), ""},
		{"qemu", Spec{Volume: "mem:///v", Runtime: RuntimeQemu, Qemu: &QemuSpec{Kernel: "/k"}}, ""},
		{"no volume", Spec{Runtime: RuntimeProcess, Args: []string{"x"}}, "missing volume URL"},
		{"bad volume", Spec{Volume: "mem://", Runtime: RuntimeProcess, Args: []string{"x"}}, "volume"},
		{"no runtime", Spec{Volume: "mem:///v"}, "missing runtime"},
		{"unknown runtime", Spec{Volume: "mem:///v", Runtime: "docker"}, `unknown runtime "docker"`},
		{"no command", Spec{Volume: "mem:///v", Runtime: RuntimeProcess}, "needs a command"},
		{"no kernel", Spec{Volume: "mem:///v", Runtime: RuntimeQemu}, "needs a kernel"},
		{"bad accel", Spec{Volume: "mem:///v", Runtime: RuntimeQemu, Qemu: &QemuSpec{Kernel: "/k", Accel: "hvf"}}, "accel"},
		{"bad env", Spec{Volume: "mem:///v", Runtime: RuntimeProcess, Args: []string{"x"}, Env: []string{"NOEQUALS"}}, "KEY=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

func TestTransitions(t *testing.T) {
	spec := procSpec("v")
	p1, err := NextRun(nil, "m", spec, "h1", t0)
	if err != nil || p1.Version != 1 || p1.State != Running || p1.Host != "h1" || p1.From != "" {
		t.Fatalf("NextRun = %+v, %v", p1, err)
	}
	if _, err := NextRun(p1, "m", spec, "h2", t0); !errors.Is(err, ErrMachineExists) {
		t.Fatalf("NextRun over a live machine: %v, want ErrMachineExists", err)
	}
	p2, err := NextMove(p1, "m", "h2", ReasonMigrate, t0)
	if err != nil || p2.Version != 2 || p2.Host != "h2" || p2.From != "h1" || p2.State != Running || p2.Reason != ReasonMigrate {
		t.Fatalf("NextMove = %+v, %v", p2, err)
	}
	if _, err := NextMove(p2, "m", "h2", ReasonMigrate, t0); !errors.Is(err, ErrNoChange) {
		t.Fatalf("move to the same host: %v, want ErrNoChange", err)
	}
	p3, err := NextMove(p2, "m", "h3", ReasonFailover, t0)
	if err != nil || p3.From != "" {
		t.Fatalf("failover move = %+v, %v; want no From (nobody waits for a dead host)", p3, err)
	}
	p4, err := NextStop(p3, "m", t0)
	if err != nil || p4.State != Stopped || p4.Host != "h3" || p4.From != "" {
		t.Fatalf("NextStop = %+v, %v", p4, err)
	}
	if _, err := NextStop(p4, "m", t0); !errors.Is(err, ErrNoChange) {
		t.Fatalf("stop a stopped machine: %v", err)
	}
	p5, err := NextMove(p4, "m", "h1", ReasonDrain, t0)
	if err != nil || p5.From != "" || p5.State != Stopped {
		t.Fatalf("moving a stopped machine = %+v, %v; want no From", p5, err)
	}
	p6, err := NextStart(p5, "m", "", t0)
	if err != nil || p6.State != Running || p6.Host != "h1" {
		t.Fatalf("NextStart = %+v, %v", p6, err)
	}
	p7, err := NextRemove(p6, "m", t0)
	if err != nil || p7.State != Deleted || p7.From != "h1" {
		t.Fatalf("NextRemove = %+v, %v", p7, err)
	}
	for _, f := range []func() error{
		func() error { _, err := NextStop(p7, "m", t0); return err },
		func() error { _, err := NextStart(p7, "m", "", t0); return err },
		func() error { _, err := NextMove(p7, "m", "h2", ReasonMigrate, t0); return err },
		func() error { _, err := NextRemove(nil, "m", t0); return err },
	} {
		if err := f(); !errors.Is(err, ErrNoMachine) {
			t.Fatalf("change of a removed machine: %v, want ErrNoMachine", err)
		}
	}
	p8, err := NextRun(p7, "m", spec, "h2", t0)
	if err != nil || p8.Version != 8 {
		t.Fatalf("NextRun after rm = %+v, %v; want version 8", p8, err)
	}
}

func TestLeastLoadedAndPlans(t *testing.T) {
	ps := map[string]*Placement{}
	add := func(name, host string, st State) {
		ps[name] = &Placement{Name: name, Version: 3, Host: host, State: st}
	}
	add("a", "h1", Running)
	add("b", "h1", Running)
	add("c", "h2", Running)
	add("d", "h1", Stopped)
	add("e", "h3", Deleted)

	if got := Load(ps); !reflect.DeepEqual(got, map[string]int{"h1": 2, "h2": 1}) {
		t.Fatalf("Load = %v", got)
	}
	if h, ok := LeastLoaded([]string{"h2", "h3", "h1"}, Load(ps)); !ok || h != "h3" {
		t.Fatalf("LeastLoaded = %q %v, want h3", h, ok)
	}
	if h, ok := LeastLoaded([]string{"h4", "h3"}, Load(ps)); !ok || h != "h3" {
		t.Fatalf("tie goes to the smallest id: %q", h)
	}
	if _, ok := LeastLoaded(nil, nil); ok {
		t.Fatal("LeastLoaded with no candidates")
	}

	dead := func(h string) bool { return h == "h1" }
	moves := FailoverMoves(ps, dead, []string{"h2", "h3"})
	want := []Move{{Name: "a", Version: 3, From: "h1", To: "h3"}, {Name: "b", Version: 3, From: "h1", To: "h2"}}
	if !reflect.DeepEqual(moves, want) {
		t.Fatalf("FailoverMoves = %+v, want %+v (stopped and deleted machines stay)", moves, want)
	}
	if m := FailoverMoves(ps, dead, nil); len(m) != 0 {
		t.Fatalf("FailoverMoves without candidates = %v", m)
	}
	moves = DrainMoves(ps, "h1", []string{"h2", "h3"})
	want = []Move{
		{Name: "a", Version: 3, From: "h1", To: "h3"},
		{Name: "b", Version: 3, From: "h1", To: "h2"},
		{Name: "d", Version: 3, From: "h1", To: "h3"},
	}
	if !reflect.DeepEqual(moves, want) {
		t.Fatalf("DrainMoves = %+v, want %+v", moves, want)
	}
}

func TestLatest(t *testing.T) {
	ps := []*Placement{{Name: "a", Version: 1}, {Name: "a", Version: 3}, {Name: "b", Version: 2}, {Name: "a", Version: 2}}
	got := Latest(ps)
	if got["a"].Version != 3 || got["b"].Version != 2 || len(got) != 2 {
		t.Fatalf("Latest = %v", got)
	}
}

func TestLiveness(t *testing.T) {
	const timeout = 2 * time.Second
	l := NewLiveness(timeout)
	hb := func(host string, seq uint64) *Heartbeat {
		return &Heartbeat{Host: host, Seq: seq, Started: t0}
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	step := 200 * time.Millisecond

	if s := l.State("h1", at(0)); s != HostUnknown {
		t.Fatalf("never seen: %v", s)
	}
	// h1 heartbeats every round; h2 stops after its first.
	var now time.Time
	for i := 0; i <= 15; i++ {
		now = at(time.Duration(i) * step)
		l.Observe(now, []*Heartbeat{hb("h1", uint64(i+1)), hb("h2", 1)})
	}
	// h2's heartbeat has been the same for 3 s of continuous observation.
	if s := l.State("h1", now); s != HostLive {
		t.Fatalf("h1 = %v, want live", s)
	}
	if s := l.State("h2", now); s != HostDead {
		t.Fatalf("h2 = %v, want dead", s)
	}
	if s := l.State("h2", at(timeout)); s != HostLive {
		t.Fatalf("h2 at exactly the timeout = %v, want live", s)
	}
	// h2 restarts: a new Started counts as a change even with the same seq.
	restarted := hb("h2", 1)
	restarted.Started = t0.Add(time.Hour)
	now = now.Add(step)
	l.Observe(now, []*Heartbeat{hb("h1", 100), restarted})
	if s := l.State("h2", now); s != HostLive {
		t.Fatalf("restarted h2 = %v, want live", s)
	}
	// A Down heartbeat is dead at once.
	down := hb("h1", 101)
	down.Down = true
	now = now.Add(step)
	l.Observe(now, []*Heartbeat{down, restarted})
	if s := l.State("h1", now); s != HostDead {
		t.Fatalf("down h1 = %v, want dead", s)
	}
	// A host whose heartbeat object vanished is forgotten.
	now = now.Add(step)
	l.Observe(now, []*Heartbeat{restarted})
	if s := l.State("h1", now); s != HostUnknown {
		t.Fatalf("vanished h1 = %v, want unknown", s)
	}
	if got := l.Hosts(); !reflect.DeepEqual(got, []string{"h2"}) {
		t.Fatalf("Hosts = %v", got)
	}
}

// TestLivenessObserverPause: an observer that was paused (SIGSTOP) for
// longer than the timeout sees unchanged heartbeats when it resumes, but
// must not declare their hosts dead: it was not watching.
func TestLivenessObserverPause(t *testing.T) {
	const timeout = 2 * time.Second
	l := NewLiveness(timeout)
	hbs := []*Heartbeat{{Host: "h1", Seq: 7, Started: t0}}
	l.Observe(t0, hbs)
	l.Observe(t0.Add(200*time.Millisecond), hbs)
	// Paused for 10 s; the first round after it still reads seq 7 (the
	// other agent's next heartbeat has not happened yet).
	resumed := t0.Add(10 * time.Second)
	l.Observe(resumed, hbs)
	if s := l.State("h1", resumed); s != HostLive {
		t.Fatalf("after the observer's own pause: %v, want live", s)
	}
	// If it then really stays silent for the timeout, it is dead.
	var now time.Time
	for i := 1; i <= 11; i++ {
		now = resumed.Add(time.Duration(i) * 200 * time.Millisecond)
		l.Observe(now, hbs)
	}
	if s := l.State("h1", now); s != HostDead {
		t.Fatalf("silent for 2.2 s of watching: %v, want dead", s)
	}
}

func TestAgeState(t *testing.T) {
	h := &Heartbeat{Host: "h", Time: t0, Timeout: time.Second}
	if s := AgeState(h, t0.Add(999*time.Millisecond), 0); s != HostLive {
		t.Fatal(s)
	}
	if s := AgeState(h, t0.Add(1001*time.Millisecond), 0); s != HostDead {
		t.Fatal(s)
	}
	h.Timeout = 0
	if s := AgeState(h, t0.Add(5*time.Second), 10*time.Second); s != HostLive {
		t.Fatal("default timeout not used")
	}
	h.Down = true
	if s := AgeState(h, t0, time.Hour); s != HostDead {
		t.Fatal("down heartbeat live")
	}
	if s := AgeState(nil, t0, time.Hour); s != HostUnknown {
		t.Fatal(s)
	}
}
