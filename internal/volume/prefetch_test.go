package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// prefetchVolume creates volume "v" of n MiB in p and writes it one record
// per MiB (each written and flushed on its own), with random bytes but for
// a trimmed hole in MiB 3; it returns the expected contents.
func prefetchVolume(t *testing.T, p *Pool, n int) []byte {
	t.Helper()
	ctx := context.Background()
	if _, err := p.Create(ctx, "v", CreateOptions{Size: uint64(n) << 20}); err != nil {
		t.Fatal(err)
	}
	w, err := p.Open(ctx, "v", Options{Logger: testLogger(t), IdleFlush: -1})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(21, 22))
	model := make([]byte, n<<20)
	for i := range model {
		model[i] = byte(rng.Uint32())
	}
	for i := 0; i < n; i++ {
		off := int64(i) << 20
		if err := w.WriteAt(ctx, model[off:off+1<<20], off); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	hole := int64(3<<20 + 100<<10)
	if err := w.Trim(ctx, hole, 256<<10); err != nil {
		t.Fatal(err)
	}
	clear(model[hole : hole+256<<10])
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return model
}

// TestPrefetchSameBytes: prefetching a volume (ranges unaligned,
// overlapping, out of order, past the end, with writes still in memory)
// never changes what reads return, and what it fetched is really in the
// cache: with every GET failing afterwards, the whole volume still reads
// back exactly. A second prefetch finds everything cached.
func TestPrefetchSameBytes(t *testing.T) {
	ctx := context.Background()
	var getsFail atomic.Bool
	var gets atomic.Int64
	store := faultstore.New(openStore(t, "mem://prefetchbytes"), faultstore.Hooks{
		Before: func(op faultstore.Op, key string) error {
			if op != faultstore.OpGetRange || !isLogKey(key) {
				return nil
			}
			gets.Add(1)
			if getsFail.Load() {
				return faultstore.ErrInjected
			}
			return nil
		},
	})
	p := initPool(t, store)
	const mib = 12
	model := prefetchVolume(t, p, mib)

	c := openCache(t, t.TempDir(), 64<<20)
	defer c.Close()
	v, err := p.Open(ctx, "v", Options{Cache: c, Logger: testLogger(t), IdleFlush: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	// A write not yet flushed: prefetch must leave it alone, and reads see it.
	fresh := bytes.Repeat([]byte{0xa5}, 300<<10)
	copy(model[5<<20+7:], fresh)
	if err := v.WriteAt(ctx, fresh, 5<<20+7); err != nil {
		t.Fatal(err)
	}
	ranges := []Range{{Off: 9<<20 + 12345, Len: 3 << 20}, {Off: 0, Len: 5 << 20}, {Off: 4<<20 + 1, Len: 6 << 20}, {Off: 11 << 20, Len: 64 << 20}, {Off: -5, Len: 10}}
	st, err := v.Prefetch(ctx, ranges, 4)
	if err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	// 12 MiB minus the 256 KiB hole and the pending write's chunks.
	if st.Chunks < 150 || st.Bytes < 150<<16 || st.GETs == 0 || st.GETs > st.Chunks {
		t.Fatalf("prefetch stats %+v: expected about 180 chunks in fewer GETs", st)
	}
	getsFail.Store(true)
	before := gets.Load()
	got := make([]byte, len(model))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read after prefetch, GETs failing (so something was not prefetched): %v", err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("a read after prefetch differs from what was written")
	}
	if n := gets.Load() - before; n != 0 {
		t.Fatalf("a read of the prefetched volume made %d GETs, want 0", n)
	}
	// Prefetch returns once its GETs are done; their cache fills end in
	// the background (a read meanwhile copies their frames), and a
	// prefetch that finds one still going joins it, counting a GET.
	waitFetchesIdle(t, v)
	st, err = v.Prefetch(ctx, []Range{{Off: 0, Len: mib << 20}}, 0)
	if err != nil || st.GETs != 0 || st.Cached < 150 {
		t.Fatalf("second prefetch: %+v, %v: want everything cached and no GET", st, err)
	}

	getsFail.Store(false)
	var none *Volume
	if none, err = p.Open(ctx, "v", Options{ReadOnly: true, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	defer none.Close(ctx)
	if _, err := none.Prefetch(ctx, ranges, 0); !errors.Is(err, ErrNoCache) {
		t.Fatalf("prefetch without a cache: %v, want ErrNoCache", err)
	}
}

// TestPrefetchOrder: with one GET in flight, Prefetch fetches the records
// in the order of the ranges it is given (the order the machine will
// need them), not in volume order.
func TestPrefetchOrder(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var order []string
	var recording atomic.Bool
	store := faultstore.New(openStore(t, "mem://prefetchorder"), faultstore.Hooks{
		Before: func(op faultstore.Op, key string) error {
			if recording.Load() && op == faultstore.OpGetRange && isLogKey(key) {
				mu.Lock()
				order = append(order, key)
				mu.Unlock()
			}
			return nil
		},
	})
	p := initPool(t, store)
	prefetchVolume(t, p, 8)
	v := openCold(t, p, "v", Options{})
	// Every MiB is its own record: learn their keys in volume order.
	recording.Store(true)
	for i := int64(0); i < 8; i++ {
		if err := v.ReadAt(ctx, make([]byte, 1), i<<20+512<<10); err != nil {
			t.Fatal(err)
		}
	}
	byMiB := slices.Clone(order)
	order = nil
	want := []int{6, 1, 7, 0, 4}
	var ranges []Range
	var wantKeys []string
	for _, i := range want {
		ranges = append(ranges, Range{Off: int64(i) << 20, Len: 256 << 10})
		wantKeys = append(wantKeys, byMiB[i])
	}
	if _, err := v.Prefetch(ctx, ranges, 1); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, wantKeys) {
		t.Fatalf("prefetch fetched records %v, want the ranges' order %v (MiB %v)", order, wantKeys, want)
	}
}

// demandTag marks the context of the test's demand reads, so the store hook
// tells their GETs from the prefetch's.
type demandTag struct{}

// TestPrefetchDoesNotDelayDemandReads: while a large prefetch has all its
// GETs stuck in the store (its lane full, most of its queue waiting), a
// demand read of a range the prefetch has not reached yet issues its own
// GET at once and returns; the prefetch meanwhile has not gone past its
// bound. Released, the prefetch finishes and every byte reads back right.
func TestPrefetchDoesNotDelayDemandReads(t *testing.T) {
	ctx := context.Background()
	var blocking atomic.Bool
	var blocked, demandGETs, blockedAtDemand atomic.Int64
	release := make(chan struct{})
	store := faultstore.New(openStore(t, "mem://prefetchdemand"), faultstore.Hooks{
		BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
			if !blocking.Load() || op != faultstore.OpGetRange || !isLogKey(key) {
				return nil
			}
			if ctx.Value(demandTag{}) != nil {
				demandGETs.Add(1)
				blockedAtDemand.Store(blocked.Load())
				return nil
			}
			blocked.Add(1)
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	p := initPool(t, store)
	const mib = 24
	model := prefetchVolume(t, p, mib)
	v := openCold(t, p, "v", Options{})

	const lane = 4
	blocking.Store(true)
	type result struct {
		st  PrefetchStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		// One range per MiB, in volume order: MiB 20 is far down the queue.
		var rs []Range
		for i := int64(0); i < mib; i++ {
			rs = append(rs, Range{Off: i << 20, Len: 1 << 20})
		}
		st, err := v.Prefetch(ctx, rs, lane)
		done <- result{st, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for blocked.Load() < lane {
		if time.Now().After(deadline) {
			t.Fatalf("prefetch has %d GETs in the store after 10s, want %d", blocked.Load(), lane)
		}
		time.Sleep(5 * time.Millisecond)
	}

	dctx, cancel := context.WithTimeout(context.WithValue(ctx, demandTag{}, true), 10*time.Second)
	defer cancel()
	got := make([]byte, 8192)
	const at = 20<<20 + 4096
	if err := v.ReadAt(dctx, got, at); err != nil {
		t.Fatalf("demand read while the prefetch is stuck: %v (it waited for the prefetch queue)", err)
	}
	if !bytes.Equal(got, model[at:at+8192]) {
		t.Fatal("demand read returned wrong bytes")
	}
	if n := demandGETs.Load(); n != 1 {
		t.Fatalf("demand read made %d GETs, want 1", n)
	}
	if n := blockedAtDemand.Load(); n != lane {
		t.Fatalf("when the demand GET was issued %d prefetch GETs were in the store, want %d (the full lane)", n, lane)
	}
	if n := blocked.Load(); n != lane {
		t.Fatalf("prefetch issued %d GETs with %d in flight, want its bound %d", n, lane, lane)
	}
	select {
	case r := <-done:
		t.Fatalf("prefetch finished while its GETs were stuck: %+v, %v", r.st, r.err)
	default:
	}

	close(release)
	r := <-done
	if r.err != nil {
		t.Fatalf("prefetch: %v", r.err)
	}
	if r.st.GETs < mib-1 || r.st.Chunks < 16*(mib-1) {
		t.Fatalf("prefetch stats %+v: want one GET per MiB record and its chunks", r.st)
	}
	all := make([]byte, len(model))
	if err := v.ReadAt(ctx, all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, model) {
		t.Fatal("volume reads differently after the prefetch")
	}
}

// TestPrefetchCancelDoesNotWait: cancelling a prefetch whose GETs are stuck
// in the store returns at once with the context's error (a machine that
// stops must not wait for a slow store), and a demand read that joined one
// of those GETs still gets its bytes once the store answers.
func TestPrefetchCancelDoesNotWait(t *testing.T) {
	ctx := context.Background()
	var blocked atomic.Int64
	release := make(chan struct{})
	var blocking atomic.Bool
	store := faultstore.New(openStore(t, "mem://prefetchcancel"), faultstore.Hooks{
		BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
			if !blocking.Load() || op != faultstore.OpGetRange || !isLogKey(key) {
				return nil
			}
			blocked.Add(1)
			<-release
			return nil
		},
	})
	p := initPool(t, store)
	model := prefetchVolume(t, p, 4)
	v := openCold(t, p, "v", Options{})
	blocking.Store(true)
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := v.Prefetch(pctx, []Range{{Off: 0, Len: 4 << 20}}, 2)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for blocked.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("prefetch has %d GETs in the store after 10s, want 2", blocked.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A demand read of the first MiB joins the prefetch's stuck GET.
	got := make([]byte, 4096)
	read := make(chan error, 1)
	go func() { read <- v.ReadAt(ctx, got, 100) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled prefetch returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled prefetch still waiting for its GETs after 10s")
	}
	close(release)
	if err := <-read; err != nil {
		t.Fatalf("demand read that joined a cancelled prefetch's GET: %v", err)
	}
	if !bytes.Equal(got, model[100:100+4096]) {
		t.Fatal("demand read returned wrong bytes")
	}
}
