package agent

import (
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

func TestDecideRun(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	spec := fleet.Spec{Volume: "mem://p/v", Runtime: "process", Args: []string{"true"}}
	other := fleet.Spec{Volume: "mem://p/w", Runtime: "process", Args: []string{"true"}}
	pl := func(v uint64, host string, state fleet.State, from string) *fleet.Placement {
		return &fleet.Placement{Name: "m", Version: v, Spec: spec, Host: host, State: state, From: from, Reason: "why"}
	}
	running := func(v uint64) *runInst { return &runInst{version: v, spec: &spec} }
	for _, c := range []struct {
		name string
		st   runState
		o    runObs
		want runPlan
		next runState
	}{
		{name: "nothing placed yet",
			o: runObs{}},
		{name: "placed here: start",
			o:    runObs{p: pl(1, "h1", fleet.Running, "")},
			want: runPlan{start: true}},
		{name: "ended here by itself: not restarted",
			st:   runState{finished: 3},
			o:    runObs{p: pl(3, "h1", fleet.Running, "")},
			next: runState{finished: 3}},
		{name: "backing off after a failure",
			st:   runState{failures: 2, retryAt: now.Add(time.Second)},
			o:    runObs{p: pl(1, "h1", fleet.Running, "")},
			next: runState{failures: 2, retryAt: now.Add(time.Second)}},
		{name: "backoff over: start",
			st:   runState{failures: 2, retryAt: now},
			o:    runObs{p: pl(1, "h1", fleet.Running, "")},
			want: runPlan{start: true},
			next: runState{failures: 2, retryAt: now}},
		{name: "agent stopping: no start",
			o: runObs{p: pl(1, "h1", fleet.Running, ""), stopping: true}},
		{name: "running, nothing new",
			o: runObs{p: pl(2, "h1", fleet.Running, ""), inst: running(2), reported: true}},
		{name: "workload ended: stop, remember it ended",
			o:    runObs{p: pl(2, "h1", fleet.Running, ""), inst: &runInst{version: 2, spec: &spec, ended: true}, reported: true},
			want: runPlan{stop: "ended"},
			next: runState{finished: 2}},
		{name: "newer version, same spec, still here: adopt",
			o:    runObs{p: pl(4, "h1", fleet.Running, ""), inst: running(2), reported: true},
			want: runPlan{adopt: true}},
		{name: "newer version, other spec: restart",
			o:    runObs{p: &fleet.Placement{Version: 4, Spec: other, Host: "h1", State: fleet.Running, Reason: "edit"}, inst: running(2), reported: true},
			want: runPlan{stop: "edit", start: true}},
		{name: "moved away: stop, ack, forget",
			st:   runState{failures: 1, retryAt: now},
			o:    runObs{p: pl(5, "h2", fleet.Running, "h1"), inst: running(4), reported: true},
			want: runPlan{stop: "why", ack: true, clearStatus: true},
			next: runState{acked: 5}},
		{name: "moved away, already acked",
			st:   runState{acked: 5},
			o:    runObs{p: pl(5, "h2", fleet.Running, "h1"), reported: true},
			want: runPlan{clearStatus: true},
			next: runState{acked: 5}},
		{name: "moved away and already forgotten",
			st:   runState{acked: 5},
			o:    runObs{p: pl(5, "h2", fleet.Running, "h1")},
			next: runState{acked: 5}},
		{name: "stopped here: stop, ack, keep reporting",
			o:    runObs{p: pl(6, "h1", fleet.Stopped, "h1"), inst: running(5), reported: true},
			want: runPlan{stop: "why", ack: true},
			next: runState{acked: 6}},
		{name: "deleted here: forget",
			o:    runObs{p: pl(7, "h1", fleet.Deleted, ""), reported: true},
			want: runPlan{clearStatus: true}},
		{name: "moved here from another host: start (the start waits for its ack)",
			o:    runObs{p: pl(3, "h1", fleet.Running, "h2")},
			want: runPlan{start: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.o.self = "h1"
			c.o.now = now
			next, got := decideRun(c.st, c.o)
			if got != c.want {
				t.Errorf("plan %+v, want %+v", got, c.want)
			}
			if next != c.next {
				t.Errorf("state %+v, want %+v", next, c.next)
			}
		})
	}
}

func TestRunStateRetry(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	var st runState
	var got []time.Duration
	for range 7 {
		var b time.Duration
		st, b = st.startFailed(now)
		got = append(got, b)
		if !st.retryAt.Equal(now.Add(b)) {
			t.Fatalf("retry at %v after a %v backoff from %v", st.retryAt, b, now)
		}
	}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoffs %v, want %v seconds", got, want)
		}
	}
	here := &fleet.Placement{Version: 2, Host: "h1", State: fleet.Running}
	if d, ok := st.retryIn(here, "h1", false, now.Add(10*time.Second)); !ok || d != 20*time.Second {
		t.Errorf("retryIn: %v %v, want 20s true", d, ok)
	}
	if d, ok := st.retryIn(here, "h1", false, now.Add(time.Minute)); !ok || d != 0 {
		t.Errorf("retryIn past the retry time: %v %v, want 0 true", d, ok)
	}
	if _, ok := st.retryIn(here, "h1", true, now); ok {
		t.Error("retryIn while running wants a retry")
	}
	if _, ok := (runState{finished: 2}).retryIn(here, "h1", false, now); ok {
		t.Error("retryIn for a version that ended here wants a retry")
	}
	if _, ok := st.retryIn(here, "h2", false, now); ok {
		t.Error("retryIn on another host wants a retry")
	}
}
