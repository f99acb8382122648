package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// remoteStore makes a store answer record reads like a remote object
// store: each ranged GET of a log record waits latency before its first
// byte and then gets at most bytesPerSec (per request, as a real store's
// per-connection bandwidth; 0 means no cap). It counts those GETs and the
// most that were in flight at once, which is what readahead is judged by.
// Attach reads record trailers too: reset lets a test count only its reads.
type remoteStore struct {
	objstore.Store
	latency     atomic.Int64 // time.Duration; set once the volume is written
	bytesPerSec int64

	gets     atomic.Int64
	inflight atomic.Int64
	peak     atomic.Int64
}

func (s *remoteStore) reset(latency time.Duration) {
	s.latency.Store(int64(latency))
	s.gets.Store(0)
	s.peak.Store(0)
}

func (s *remoteStore) GetRange(ctx context.Context, key string, off int64, p []byte) (int, error) {
	if !strings.Contains(key, "/log/") {
		return s.Store.GetRange(ctx, key, off, p)
	}
	s.gets.Add(1)
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	d := time.Duration(s.latency.Load())
	if s.bytesPerSec > 0 {
		d += time.Duration(int64(len(p)) * int64(time.Second) / s.bytesPerSec)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.Store.GetRange(ctx, key, off, p)
}

// writeModel fills a new volume of size bytes with random data in 256 KiB
// writes, shuffled when shuffle is set (records then hold their volume
// ranges out of order, as with several writers' streams), leaving the
// 256 KiB at hole unwritten, and returns the bytes it must read back.
func writeModel(t testing.TB, p *Pool, name string, size int64, shuffle bool, hole int64) []byte {
	t.Helper()
	return writeModelOrdered(t, p, name, size, hole, func(offs []int64, rng *rand.Rand) {
		if shuffle {
			rng.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
		}
	})
}

// writeModelOrdered is writeModel with the order of the 256 KiB writes
// (ascending offsets) set by order.
func writeModelOrdered(t testing.TB, p *Pool, name string, size int64, hole int64, order func(offs []int64, rng *rand.Rand)) []byte {
	t.Helper()
	ctx := context.Background()
	if _, err := p.Create(ctx, name, CreateOptions{Size: uint64(size)}); err != nil {
		t.Fatal(err)
	}
	w, err := p.Open(ctx, name, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	model := make([]byte, size)
	for i := 0; i < len(model); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			model[i+j] = byte(v >> (8 * j))
		}
	}
	var offs []int64
	for off := int64(0); off < size; off += 256 << 10 {
		if off == hole {
			clear(model[off : off+256<<10])
			continue
		}
		offs = append(offs, off)
	}
	order(offs, rng)
	for _, off := range offs {
		if err := w.WriteAt(ctx, model[off:off+256<<10], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return model
}

// openCold attaches name read-only with an empty cache.
func openCold(t testing.TB, p *Pool, name string, o Options) *Volume {
	t.Helper()
	c := openCache(t, t.TempDir(), 256<<20)
	t.Cleanup(func() { c.Close() })
	o.ReadOnly, o.Cache, o.Logger = true, c, testLogger(t)
	v, err := p.Open(context.Background(), name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close(context.Background()) })
	return v
}

// readSeq reads [from, to) of v in reads of n bytes by qd concurrent
// readers taking the next offset in turn (one stream at queue depth qd),
// comparing every read with the model.
func readSeq(t *testing.T, v *Volume, model []byte, from, to int64, n, qd int) {
	t.Helper()
	var next atomic.Int64
	next.Store(from)
	var wg sync.WaitGroup
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, n)
			for {
				off := next.Add(int64(n)) - int64(n)
				if off >= to {
					return
				}
				b := buf[:min(int64(n), to-off)]
				if err := v.ReadAt(context.Background(), b, off); err != nil {
					t.Error(err)
					return
				}
				if want := model[off : off+int64(len(b))]; !bytes.Equal(b, want) {
					t.Errorf("read [%d,+%d) differs from the model at +%d", off, len(b), firstDiff(b, want))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestReadaheadKeepsBytes reads, through a store with latency, a volume
// written out of order (each readahead window spans many records) with a
// deep readahead: one stream at QD8, two streams at once, a large read
// split into parallel GETs, and random reads among them. Readahead must
// never change what a read returns.
func TestReadaheadKeepsBytes(t *testing.T) {
	const size = 48 << 20
	rs := &remoteStore{Store: openStore(t, "mem://readahead-bytes")}
	rs.latency.Store(int64(3 * time.Millisecond))
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, true, 9<<20)
	o := Options{ReadaheadBytes: 128 << 20}

	v := openCold(t, p, "v", o)
	readSeq(t, v, model, 0, size, 1<<20, 8)
	readSeq(t, v, model, 0, size, 1<<20, 8) // warm
	if st := v.ReadaheadStats(); st.Windows == 0 {
		t.Fatalf("no readahead on a sequential read: %+v", st)
	}

	v2 := openCold(t, p, "v", o)
	var wg sync.WaitGroup
	for _, r := range [][2]int64{{0, size / 2}, {size / 2, size}} {
		wg.Add(1)
		go func() { defer wg.Done(); readSeq(t, v2, model, r[0], r[1], 128<<10, 2) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(5, 6))
		for range 100 {
			n := 1 + rng.IntN(64<<10)
			off := rng.Int64N(size - int64(n))
			buf := make([]byte, n)
			if err := v2.ReadAt(context.Background(), buf, off); err != nil {
				t.Error(err)
				return
			}
			if !bytes.Equal(buf, model[off:off+int64(n)]) {
				t.Errorf("random read [%d,+%d) differs at +%d", off, n, firstDiff(buf, model[off:off+int64(n)]))
				return
			}
		}
	}()
	wg.Wait()

	// One 24 MiB read, cold: split into parallel GETs, bytes unchanged.
	v3 := openCold(t, p, "v", o)
	big := make([]byte, 24<<20)
	if err := v3.ReadAt(context.Background(), big, 3<<20+4096); err != nil {
		t.Fatal(err)
	}
	if want := model[3<<20+4096:][:len(big)]; !bytes.Equal(big, want) {
		t.Fatalf("large read differs from the model at +%d", firstDiff(big, want))
	}
}

// TestReadaheadFillsPipe reads a volume sequentially at queue depth 1
// through a store with 250 ms per GET: the readahead must grow until many
// windows are in flight at once (the bandwidth-delay product of a remote
// store), bounded by the budget. The old fixed readahead never had more
// than five GETs in flight. (The long delay keeps a window's GET in
// flight while the next ones start, even on a loaded machine.)
func TestReadaheadFillsPipe(t *testing.T) {
	const size = 128 << 20
	rs := &remoteStore{Store: openStore(t, "mem://readahead-pipe")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)
	const budget = 64 << 20 // 16 windows of 4 MiB
	v := openCold(t, p, "v", Options{ReadaheadBytes: budget})
	// 250 ms per GET: long enough that the reader, even starved of CPU
	// under -race next to other packages' tests, keeps catching up with
	// the readahead, which is what makes it deepen (at 80 ms CI saw the
	// depth stop at 8 of 16 windows).
	rs.reset(250 * time.Millisecond) // after the writes and the attach: count the reads
	readSeq(t, v, model, 0, size, 1<<20, 1)
	st := v.ReadaheadStats()
	t.Logf("GETs %d, peak in flight %d, readahead %+v", rs.gets.Load(), rs.peak.Load(), st)
	// The old fixed readahead never had more than 3 GETs in flight; the
	// budget allows 16 windows, but how many of them overlap at the store
	// depends on how fast a loaded machine (-race, 2 shared vCPUs) issues
	// them against the GETs: 11 was seen there at 80 ms, and 7 (with 10
	// windows in flight in the volume) at load average 8 in CI, so ask for
	// twice the old depth.
	if got := rs.peak.Load(); got < 6 {
		t.Errorf("at most %d record GETs in flight during a sequential read; want >= 6", got)
	}
	if want := budget/(4<<20) - raReading; st.DeepestStream != want {
		t.Errorf("readahead depth reached %d windows; want the budget's %d less the %d a stream reads in", st.DeepestStream, want, raReading)
	}
	if st.PeakInFlight > budget/(4<<20) {
		t.Errorf("%d readahead windows in flight at once; the budget allows %d", st.PeakInFlight, budget/(4<<20))
	}
	// Each 4 MiB record was fetched once (the first, not yet sequential,
	// read fetched 1 MiB on its own): readahead and reader share GETs.
	if got, max := rs.gets.Load(), int64(size/(4<<20))+1; got > max {
		t.Errorf("%d record GETs for %d records", got, max)
	}
}

// TestColdRandomReadsOneGETEach: random 4 KiB reads of a cold volume are
// one ranged GET each, and start no readahead.
func TestColdRandomReadsOneGETEach(t *testing.T) {
	const size = 64 << 20
	rs := &remoteStore{Store: openStore(t, "mem://readahead-random")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)
	v := openCold(t, p, "v", Options{})
	rs.reset(time.Millisecond)
	// Distinct 256 KiB slots in random order: no read starts near where a
	// recent one ended, and none shares a chunk with another.
	slots := rand.New(rand.NewPCG(1, 2)).Perm(size / (256 << 10))[:64]
	buf := make([]byte, 4096)
	for i, s := range slots {
		off := int64(s)*(256<<10) + int64(i%60)*4096
		if err := v.ReadAt(context.Background(), buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, model[off:off+4096]) {
			t.Fatalf("read at %d differs from the model at +%d", off, firstDiff(buf, model[off:off+4096]))
		}
	}
	if got := rs.gets.Load(); got != int64(len(slots)) {
		t.Errorf("%d cold random 4 KiB reads made %d record GETs; want one each", len(slots), got)
	}
	if st := v.ReadaheadStats(); st.Windows != 0 {
		t.Errorf("random reads started readahead: %+v", st)
	}
}

// TestSeqReadFillBound reads a cold volume sequentially twice with a fill
// bound of a quarter of it: the first pass must cache only about the bound
// (the rest is handed from the readahead to the reader, each record still
// fetched once), and the second pass must read the bound's part from the
// cache without a GET. Bytes are checked on both passes. Before the bound,
// the pass cached the whole volume.
func TestSeqReadFillBound(t *testing.T) {
	const size, bound = 64 << 20, 16 << 20
	rs := &remoteStore{Store: openStore(t, "mem://readahead-fill-bound")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)
	c := openCache(t, t.TempDir(), 256<<20)
	t.Cleanup(func() { c.Close() })
	v, err := p.Open(context.Background(), "v", Options{ReadOnly: true, Cache: c, Logger: testLogger(t), ReadaheadFillBytes: bound})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close(context.Background()) })

	rs.reset(5 * time.Millisecond)
	readSeq(t, v, model, 0, size, 1<<20, 2)
	firstGets := rs.gets.Load()
	waitFetchesIdle(t, v)
	st := c.Stats().Bytes
	// The bound, plus the windows started just before it and the demand
	// fetch of the first (not yet sequential) read.
	if limit := int64(bound + 3*(4<<20)); st > limit {
		t.Errorf("one sequential pass cached %d MiB; want at most %d MiB (fill bound %d MiB)", st>>20, limit>>20, bound>>20)
	}
	if max := int64(size/(4<<20)) + 2; firstGets > max {
		t.Errorf("first pass made %d record GETs for %d records: handed-off windows were fetched again", firstGets, size/(4<<20))
	}

	rs.reset(time.Millisecond)
	readSeq(t, v, model, 0, bound, 1<<20, 1)
	if got := rs.gets.Load(); got != 0 {
		t.Errorf("second read of the first %d MiB made %d record GETs; want all from the cache", bound>>20, got)
	}
	readSeq(t, v, model, bound, size, 1<<20, 1) // past the bound: bytes still right
}
