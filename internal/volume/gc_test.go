package volume

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// fakeClock is a settable clock: Now and the background loops' tickers
// move only when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	t       time.Time
	tickers []*fakeTicker
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Advance moves the clock and fires every ticker whose period elapsed (one
// tick each at most, as a time.Ticker drops ticks nobody read).
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	for _, tk := range c.tickers {
		if tk.stopped || c.t.Before(tk.next) {
			continue
		}
		for !c.t.Before(tk.next) {
			tk.next = tk.next.Add(tk.every)
		}
		select {
		case tk.c <- c.t:
		default:
		}
	}
}

func (c *fakeClock) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("fakeClock.NewTicker: non-positive interval")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tk := &fakeTicker{clock: c, every: d, next: c.t.Add(d), c: make(chan time.Time, 1)}
	c.tickers = append(c.tickers, tk)
	return tk
}

// tickers reports how many live tickers have the given period.
func (c *fakeClock) tickersOf(d time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, tk := range c.tickers {
		if !tk.stopped && tk.every == d {
			n++
		}
	}
	return n
}

type fakeTicker struct {
	clock   *fakeClock
	every   time.Duration
	next    time.Time // guarded by clock.mu
	stopped bool      // guarded by clock.mu
	c       chan time.Time
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }
func (t *fakeTicker) Stop() {
	t.clock.mu.Lock()
	t.stopped = true
	t.clock.mu.Unlock()
}

// modTimeStore reports object ModTimes from the fake clock at creation, so
// grace periods follow simulated time.
type modTimeStore struct {
	objstore.Store
	clock *fakeClock
	mu    sync.Mutex
	mtime map[string]time.Time
}

func (s *modTimeStore) stamp(key string) {
	s.mu.Lock()
	s.mtime[key] = s.clock.Now()
	s.mu.Unlock()
}

func (s *modTimeStore) Put(ctx context.Context, key string, data []byte) error {
	err := s.Store.Put(ctx, key, data)
	if err == nil {
		s.stamp(key)
	}
	return err
}

func (s *modTimeStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	err := s.Store.PutIfAbsent(ctx, key, data)
	if err == nil {
		s.stamp(key)
	}
	return err
}

func (s *modTimeStore) fix(oi objstore.ObjectInfo) objstore.ObjectInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.mtime[oi.Key]; ok {
		oi.ModTime = t
	}
	return oi
}

func (s *modTimeStore) Stat(ctx context.Context, key string) (objstore.ObjectInfo, error) {
	oi, err := s.Store.Stat(ctx, key)
	return s.fix(oi), err
}

func (s *modTimeStore) List(ctx context.Context, prefix string, fn func(objstore.ObjectInfo) error) error {
	return s.Store.List(ctx, prefix, func(oi objstore.ObjectInfo) error { return fn(s.fix(oi)) })
}

// TestGCModel runs random interleavings of writes, checkpoints, restores,
// clones (of clones), deletes and GC runs; every volume and every checkpoint
// always reads back its model's bytes; deleting everything and collecting
// leaves only the pool marker.
func TestGCModel(t *testing.T) {
	seeds := 6
	if s := os.Getenv("URLDISK_GC_SEEDS"); s != "" {
		seeds, _ = strconv.Atoi(s)
	}
	base := uint64(time.Now().UnixNano())
	if s := os.Getenv("URLDISK_GC_SEED"); s != "" {
		base, _ = strconv.ParseUint(s, 10, 64)
		seeds = 1
	}
	for i := 0; i < seeds; i++ {
		seed := base + uint64(i)
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runGCModel(t, seed) })
	}
}

func runGCModel(t *testing.T, seed uint64) {
	t.Logf("seed %d", seed)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 7))
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	inner := openStore(t, fmt.Sprintf("mem://gc%d", seed))
	store := &modTimeStore{Store: inner, clock: clock, mtime: map[string]time.Time{}}
	p, err := InitPool(ctx, store, PoolOptions{Clock: clock, Logger: testLogger(t), Retention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 10
	type vol struct {
		data  []byte
		ckpts map[string][]byte
	}
	vols := map[string]*vol{}
	names := func() []string {
		var out []string
		for n := range vols {
			out = append(out, n)
		}
		sort.Strings(out)
		return out
	}
	opts := Options{SegmentBytes: 16 << 10, SnapshotEvery: 4, IdleFlush: -1, Clock: clock, Logger: testLogger(t)}
	verify := func(when string) {
		for _, n := range names() {
			v, err := p.Open(ctx, n, Options{ReadOnly: true, Clock: clock})
			if err != nil {
				t.Fatalf("%s: open %s: %v", when, n, err)
			}
			got := make([]byte, size)
			if err := v.ReadAt(ctx, got, 0); err != nil {
				t.Fatalf("%s: read %s: %v", when, n, err)
			}
			v.Close(ctx)
			if !bytes.Equal(got, vols[n].data) {
				t.Fatalf("%s: volume %s differs from model at %d", when, n, firstDiff(got, vols[n].data))
			}
			for label, want := range vols[n].ckpts {
				c, err := p.OpenAt(ctx, n, Point{Label: label}, Options{ReadOnly: true, Clock: clock})
				if err != nil {
					t.Fatalf("%s: open %s@%s: %v", when, n, label, err)
				}
				if err := c.ReadAt(ctx, got, 0); err != nil {
					t.Fatalf("%s: read %s@%s: %v", when, n, label, err)
				}
				c.Close(ctx)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: checkpoint %s@%s differs at %d", when, n, label, firstDiff(got, want))
				}
			}
		}
	}
	gc := func(o GCOptions) {
		rep, err := p.GC(ctx, o)
		if err != nil {
			t.Fatalf("gc: %v", err)
		}
		for _, it := range rep.Deleted {
			if strings.Contains(it.Key, "/log/") && !strings.Contains(it.Reason, "deleted") {
				// I4: never a fence of an existing volume.
				if r, err := p.readRecord(ctx, it.Key, it.Size); err == nil && r.Type == format.RecordFence {
					t.Fatalf("gc deleted fence %s", it.Key)
				}
			}
		}
		verify("after gc")
	}
	nextName := 0
	newName := func() string { nextName++; return fmt.Sprintf("v%d", nextName) }
	first := newName()
	if _, err := p.Create(ctx, first, CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	vols[first] = &vol{data: make([]byte, size), ckpts: map[string][]byte{}}
	for op := 0; op < 60; op++ {
		clock.Advance(time.Duration(rng.IntN(30)) * time.Minute)
		ns := names()
		if len(ns) == 0 {
			break
		}
		n := ns[rng.IntN(len(ns))]
		m := vols[n]
		k := rng.IntN(10)
		if os.Getenv("URLDISK_GC_TRACE") != "" {
			t.Logf("op %d: vol %s kind %d", op, n, k)
		}
		switch {
		case k < 4: // a burst of writes, maybe a checkpoint, maybe a restore
			v, err := p.Open(ctx, n, opts)
			if err != nil {
				t.Fatal(err)
			}
			for w := 0; w < 1+rng.IntN(6); w++ {
				off := rng.IntN(size - 1)
				l := 1 + rng.IntN(min(40000, size-off))
				buf := make([]byte, l)
				if rng.IntN(5) > 0 {
					for i := range buf {
						buf[i] = byte(rng.Uint32())
					}
				}
				if err := v.WriteAt(ctx, buf, int64(off)); err != nil {
					t.Fatal(err)
				}
				copy(m.data[off:], buf)
				if rng.IntN(3) == 0 {
					if err := v.Flush(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			if rng.IntN(3) == 0 {
				label := fmt.Sprintf("c%d", op)
				if _, err := v.Checkpoint(ctx, label); err != nil {
					t.Fatal(err)
				}
				m.ckpts[label] = bytes.Clone(m.data)
			}
			if rng.IntN(4) == 0 && len(m.ckpts) > 0 {
				var labels []string
				for l := range m.ckpts {
					labels = append(labels, l)
				}
				sort.Strings(labels)
				l := labels[rng.IntN(len(labels))]
				if _, err := v.Restore(ctx, Point{Label: l}); err != nil {
					t.Fatalf("restore %s@%s: %v", n, l, err)
				}
				copy(m.data, m.ckpts[l])
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
		case k < 6: // clone from head or a checkpoint
			dst := newName()
			pt, want := Point{}, m.data
			if len(m.ckpts) > 0 && rng.IntN(2) == 0 {
				for l, d := range m.ckpts {
					pt, want = Point{Label: l}, d
					break
				}
			}
			if _, err := p.Clone(ctx, n, pt, dst); err != nil {
				t.Fatalf("clone %s@%s: %v", n, pt, err)
			}
			vols[dst] = &vol{data: bytes.Clone(want), ckpts: map[string][]byte{}}
		case k < 7: // delete a checkpoint
			for l := range m.ckpts {
				if err := p.RemoveCheckpoint(ctx, n, l); err != nil {
					t.Fatal(err)
				}
				delete(m.ckpts, l)
				break
			}
		case k < 8 && len(ns) > 1: // delete a volume
			if err := p.Remove(ctx, n); err != nil {
				t.Fatal(err)
			}
			delete(vols, n)
		default:
			gc(GCOptions{Grace: time.Duration(rng.IntN(3)) * 20 * time.Minute, Retention: time.Duration(rng.IntN(3)) * 30 * time.Minute})
		}
	}
	verify("end")
	// Delete everything; after the grace period GC leaves only the marker.
	for _, n := range names() {
		if err := p.Remove(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Hour)
	for i := 0; i < 3; i++ { // deleted clones free their parents on the next pass
		if _, err := p.GC(ctx, GCOptions{Grace: time.Hour, Retention: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	var left []string
	store.List(ctx, "", func(oi objstore.ObjectInfo) error {
		left = append(left, oi.Key)
		return nil
	})
	if len(left) != 1 || left[0] != format.PoolMarkerKey {
		t.Fatalf("pool not empty after deleting everything: %v", left)
	}
}
