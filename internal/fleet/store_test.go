package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

func memStore(t *testing.T) objstore.Store {
	t.Helper()
	s, err := objstore.Open(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCodecRoundTripAndCorruption(t *testing.T) {
	p := &Placement{Name: "web", Version: 7, Spec: Spec{Volume: "mem:///v", Runtime: RuntimeQemu, Args: []string{"-no-reboot"},
		Qemu: &QemuSpec{Kernel: "/boot/vmlinuz", Append: "console=ttyS0", MemoryMiB: 256, CPUs: 2}},
		Host: "h1", State: Running, From: "h0", Reason: ReasonMigrate, Time: t0, By: "cli", Nonce: "abc"}
	b, err := EncodePlacement(p)
	if err != nil {
		t.Fatal(err)
	}
	q, err := DecodePlacement(b)
	if err != nil || !q.Spec.Equal(&p.Spec) || q.Host != p.Host || q.From != p.From || !q.Time.Equal(p.Time) || q.Nonce != p.Nonce {
		t.Fatalf("round trip: %+v, %v", q, err)
	}
	// Every single-byte change is detected.
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x01
		if _, err := DecodePlacement(c); err == nil {
			t.Fatalf("byte %d flipped: decoded without error", i)
		} else if !errors.Is(err, format.ErrCorrupt) {
			t.Fatalf("byte %d flipped: %v, want ErrCorrupt", i, err)
		}
	}
	// A heartbeat is not a placement.
	hb, _ := EncodeHeartbeat(&Heartbeat{Host: "h1", Seq: 1})
	if _, err := DecodePlacement(hb); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("heartbeat decoded as placement: %v", err)
	}
	if _, err := EncodePlacement(&Placement{Name: "bad name", Version: 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid placement encoded: %v", err)
	}
	h := &Heartbeat{Host: "h1", API: "http://x", Seq: 3, Machines: []MachineStatus{{Name: "m", Version: 2, Phase: PhaseRunning, Downtime: time.Second}}}
	b, _ = EncodeHeartbeat(h)
	h2, err := DecodeHeartbeat(b)
	if err != nil || h2.Machines[0].Downtime != time.Second {
		t.Fatalf("heartbeat round trip: %+v %v", h2, err)
	}
	for _, key := range []string{"fleet/machines/m/0000000000000001", "fleet/machines/a.b-c_d/00000000000000ff"} {
		if _, _, ok := ParsePlacementKey(key); !ok {
			t.Fatalf("ParsePlacementKey(%q) failed", key)
		}
	}
	for _, key := range []string{"fleet/machines/m/1", "fleet/machines/m/0000000000000000", "fleet/machines/m/000000000000000g", "fleet/agents/m/0000000000000001", "fleet/machines/-x/0000000000000001"} {
		if _, _, ok := ParsePlacementKey(key); ok {
			t.Fatalf("ParsePlacementKey(%q) accepted", key)
		}
	}
}

// TestUpdateConcurrentWriters: many writers each bump a machine's version
// through Update at once, with lost responses injected on creates. Every
// Update that returns success owns exactly one version, versions are dense,
// and no two writers own the same one.
func TestUpdateConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	var lost atomic.Int64
	rng := rand.New(rand.NewPCG(1, 2))
	var rmu sync.Mutex
	store := faultstore.New(memStore(t), faultstore.Hooks{
		After: func(op faultstore.Op, key string, err error) error {
			// Placement creates lose responses; the conditional-create
			// probe before them is not what this test is about.
			if op != faultstore.OpPutIfAbsent || err != nil || strings.HasPrefix(key, objstore.ProbePrefix) {
				return nil
			}
			rmu.Lock()
			defer rmu.Unlock()
			if rng.IntN(4) == 0 {
				lost.Add(1)
				return faultstore.ErrInjected
			}
			return nil
		},
	})
	// Keep every version: the test checks they are dense.
	keepAll := Options{KeepVersions: 1000}
	f := NewWithOptions(store, keepAll)
	if _, err := f.Update(ctx, "m", "w", func(cur *Placement) (*Placement, error) {
		return NextRun(cur, "m", procSpec("v"), "h0", t0)
	}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 10
	var wg sync.WaitGroup
	owned := make(chan uint64, writers*each)
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			fw := NewWithOptions(store, keepAll) // each writer has its own cache, like separate processes
			for i := range each {
				host := fmt.Sprintf("h%d-%d", w, i)
				p, err := fw.Update(ctx, "m", host, func(cur *Placement) (*Placement, error) {
					return NextMove(cur, "m", host, ReasonMigrate, t0)
				})
				if err != nil {
					errs <- err
					continue
				}
				owned <- p.Version
			}
		})
	}
	wg.Wait()
	close(owned)
	close(errs)
	for err := range errs {
		t.Errorf("Update: %v", err)
	}
	seen := map[uint64]bool{}
	for v := range owned {
		if seen[v] {
			t.Fatalf("version %d owned by two writers", v)
		}
		seen[v] = true
	}
	hist, err := NewWithOptions(store, keepAll).History(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1+writers*each {
		t.Fatalf("%d versions, want %d", len(hist), 1+writers*each)
	}
	for i, p := range hist {
		if p.Version != uint64(i+1) {
			t.Fatalf("version %d at index %d: not dense", p.Version, i)
		}
		if i > 0 && (!seen[p.Version] || p.By != p.Host) {
			t.Fatalf("version %d (by %s, host %s) not owned by its writer", p.Version, p.By, p.Host)
		}
	}
	if lost.Load() == 0 {
		t.Fatal("no lost responses were injected; the test is too weak")
	}
	t.Logf("%d lost create responses recovered", lost.Load())
}

func TestPlacementsSkipsCorruptNewest(t *testing.T) {
	ctx := context.Background()
	store := memStore(t)
	f := New(store, nil)
	for _, n := range []string{"a", "b"} {
		if _, err := f.Update(ctx, n, "t", func(cur *Placement) (*Placement, error) {
			return NextRun(cur, n, procSpec(n), "h1", t0)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Put(ctx, PlacementKey("b", 2), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	ps, err := New(store, nil).Placements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps["a"] == nil {
		t.Fatalf("Placements = %v; want only a (b's newest version is unreadable)", ps)
	}
	if _, err := f.Update(ctx, "b", "t", func(cur *Placement) (*Placement, error) {
		return NextStop(cur, "b", t0)
	}); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("Update over a corrupt version: %v, want ErrCorrupt", err)
	}
}

func TestAcksDrainTraces(t *testing.T) {
	ctx := context.Background()
	f := New(memStore(t), nil)
	if a, err := f.GetAck(ctx, "m", 2); a != nil || err != nil {
		t.Fatalf("missing ack: %v %v", a, err)
	}
	if err := f.PutAck(ctx, &Ack{Name: "m", Version: 2, Host: "h1", Epoch: 4, Stopped: t0}); err != nil {
		t.Fatal(err)
	}
	if err := f.PutAck(ctx, &Ack{Name: "m", Version: 2, Host: "h9"}); err != nil {
		t.Fatalf("second ack: %v", err)
	}
	a, err := f.GetAck(ctx, "m", 2)
	if err != nil || a.Host != "h1" || a.Epoch != 4 {
		t.Fatalf("ack = %+v %v; want the first one kept", a, err)
	}
	if err := f.SetDraining(ctx, "h1", true); err != nil {
		t.Fatal(err)
	}
	d, err := f.Draining(ctx)
	if err != nil || !d["h1"] || len(d) != 1 {
		t.Fatalf("Draining = %v %v", d, err)
	}
	if err := f.SetDraining(ctx, "h1", false); err != nil {
		t.Fatal(err)
	}
	if d, _ := f.Draining(ctx); len(d) != 0 {
		t.Fatalf("Draining after undrain = %v", d)
	}
	tr := &Trace{Name: "m", Volume: "mem:///v", Host: "h1", PageSize: 65536, Pages: []uint64{3, 1, 2}}
	if err := f.PutTrace(ctx, tr); err != nil {
		t.Fatal(err)
	}
	got, err := f.GetTrace(ctx, "m")
	if err != nil || len(got.Pages) != 3 || got.Pages[0] != 3 {
		t.Fatalf("trace = %+v %v", got, err)
	}
}

// fixedClock is a settable clock for Ops.
type fixedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fixedClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fixedClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestOps(t *testing.T) {
	ctx := context.Background()
	f := New(memStore(t), nil)
	clk := &fixedClock{t: t0}
	missing := errors.New("volume not found")
	ops := &Ops{Fleet: f, By: "test", Now: clk.Now, ResolveVolume: func(_ context.Context, url string) (string, error) {
		if strings.HasSuffix(url, "/nope") {
			return "", missing
		}
		return "id-" + url, nil
	}}
	beat := func(host string, down bool) {
		if err := f.PutHeartbeat(ctx, &Heartbeat{Host: host, Seq: 1, Time: clk.Now(), Timeout: 2 * time.Second, Down: down}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ops.Run(ctx, "m0", procSpec("v0"), ""); !errors.Is(err, ErrNoHosts) {
		t.Fatalf("run with no hosts: %v", err)
	}
	beat("h1", false)
	beat("h2", false)
	beat("h3", true)

	p, err := ops.Run(ctx, "m1", procSpec("v1"), "")
	if err != nil || p.Host != "h1" {
		t.Fatalf("run m1 = %+v, %v; want h1", p, err)
	}
	if p, err = ops.Run(ctx, "m2", procSpec("v2"), ""); err != nil || p.Host != "h2" {
		t.Fatalf("run m2 = %+v, %v; want the least loaded, h2", p, err)
	}
	for _, tc := range []struct {
		name, host string
		spec       Spec
		want       error
		msg        string
	}{
		{"m3", "h9", procSpec("v3"), ErrUnknownHost, "known: h1, h2, h3"},
		{"m3", "h3", procSpec("v3"), ErrHostDead, "stopped"},
		{"m3", "", Spec{Volume: "mem:///v3", Runtime: "lxc"}, ErrInvalid, `unknown runtime "lxc"`},
		{"m3", "", procSpec("nope"), ErrInvalid, "volume not found"},
		{"m3", "", procSpec("v1"), ErrVolumeInUse, `machine "m1"`},
		{"m1", "", procSpec("v9"), ErrMachineExists, `"m1"`},
		{"bad/name", "", procSpec("v9"), ErrInvalid, "machine"},
	} {
		_, err := ops.Run(ctx, tc.name, tc.spec, tc.host)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("run %s on %q: %v; want %v mentioning %q", tc.name, tc.host, err, tc.want, tc.msg)
		}
	}
	if _, err := ops.Migrate(ctx, "m1", "h3"); !errors.Is(err, ErrHostDead) {
		t.Fatalf("migrate to a dead host: %v", err)
	}
	if _, err := ops.Migrate(ctx, "nope", "h2"); !errors.Is(err, ErrNoMachine) {
		t.Fatalf("migrate a missing machine: %v", err)
	}
	if p, err = ops.Migrate(ctx, "m1", "h2"); err != nil || p.From != "h1" || p.Version != 2 {
		t.Fatalf("migrate = %+v %v", p, err)
	}
	if _, err = ops.Migrate(ctx, "m1", "h2"); !errors.Is(err, ErrNoChange) {
		t.Fatalf("migrate again: %v, want ErrNoChange", err)
	}
	// Drain h2: both machines go to h1 (h3 is down), and h2 is marked.
	res, err := ops.Drain(ctx, "h2")
	if err != nil || len(res) != 2 {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	for _, r := range res {
		if r.Err != nil || r.Placement == nil || r.Placement.Host != "h1" || r.Placement.From != "h2" || r.Placement.Reason != ReasonDrain {
			t.Fatalf("drain result %+v", r)
		}
	}
	if _, err := ops.Run(ctx, "m4", procSpec("v4"), "h2"); !errors.Is(err, ErrHostDead) || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("run on a draining host: %v", err)
	}
	// Stop, then h1 dies: start picks a live host (none but the draining h2: error).
	if _, err := ops.Stop(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	clk.Add(3 * time.Second)
	beat("h2", false)
	if _, err := ops.Start(ctx, "m1"); !errors.Is(err, ErrNoHosts) {
		t.Fatalf("start with only a draining host live: %v", err)
	}
	if err := f.SetDraining(ctx, "h2", false); err != nil {
		t.Fatal(err)
	}
	if p, err = ops.Start(ctx, "m1"); err != nil || p.Host != "h2" || p.State != Running || p.From != "" {
		t.Fatalf("start = %+v %v; want h2 (h1 is dead)", p, err)
	}
	if _, err = ops.Start(ctx, "m1"); !errors.Is(err, ErrNoChange) {
		t.Fatalf("start of a running machine: %v", err)
	}
	// Its workload exits on h2: start runs it again there.
	if err := f.PutHeartbeat(ctx, &Heartbeat{Host: "h2", Seq: 2, Time: clk.Now(), Timeout: 2 * time.Second,
		Machines: []MachineStatus{{Name: "m1", Version: p.Version, Phase: PhaseExited, ExitCode: 1}}}); err != nil {
		t.Fatal(err)
	}
	if q, err := ops.Start(ctx, "m1"); err != nil || q.Version != p.Version+1 || q.Host != "h2" || q.State != Running {
		t.Fatalf("restart of an exited machine = %+v, %v", q, err)
	}
	if p, err = ops.Remove(ctx, "m1"); err != nil || p.State != Deleted {
		t.Fatalf("rm = %+v %v", p, err)
	}
	if p, err = ops.Run(ctx, "m3", procSpec("v1"), ""); err != nil {
		t.Fatalf("the volume of a removed machine is free again: %v", err)
	}
}

// TestNoConditionalCreate: on a store that overwrites on create-if-absent
// the fleet refuses to write a placement version or an ack
// (ErrNoConditionalCreate, naming the store) and writes none; before, two
// schedulers could both win one version.
func TestNoConditionalCreate(t *testing.T) {
	ctx := context.Background()
	inner := memStore(t)
	f := New(faultstore.New(inner, faultstore.Hooks{NoConditionalCreate: true}), nil)
	if err := f.CheckConditionalCreate(ctx); !errors.Is(err, ErrNoConditionalCreate) {
		t.Fatalf("CheckConditionalCreate = %v, want ErrNoConditionalCreate", err)
	}
	_, err := f.Update(ctx, "m", "w", func(cur *Placement) (*Placement, error) {
		return NextRun(cur, "m", procSpec("v"), "h0", t0)
	})
	if !errors.Is(err, ErrNoConditionalCreate) || !strings.Contains(err.Error(), "conditional create disabled by faultstore") {
		t.Errorf("Update: err = %v, want ErrNoConditionalCreate naming the store", err)
	}
	if err := f.PutAck(ctx, &Ack{Name: "m", Version: 1, Host: "h0", Stopped: t0}); !errors.Is(err, ErrNoConditionalCreate) {
		t.Errorf("PutAck: err = %v, want ErrNoConditionalCreate", err)
	}
	var keys []string
	if err := inner.List(ctx, "", func(oi objstore.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("objects written on a store without conditional create: %v", keys)
	}
	// The same fleet over the honest store writes.
	if _, err := New(inner, nil).Update(ctx, "m", "w", func(cur *Placement) (*Placement, error) {
		return NextRun(cur, "m", procSpec("v"), "h0", t0)
	}); err != nil {
		t.Fatalf("Update on a conforming store: %v", err)
	}
}
