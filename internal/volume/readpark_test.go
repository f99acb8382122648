package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

// blindCache is a cache.Cache whose reads can be made to miss (blind), and
// that counts its read hits: with it a test sees which reads were served
// from the cache and which from memory, while fills go to the real cache.
type blindCache struct {
	*cache.Cache
	blind atomic.Bool
	hits  atomic.Int64
}

func (c *blindCache) ReadAt(key cache.Key, p []byte, off int) (bool, error) {
	if c.blind.Load() {
		return false, nil
	}
	hit, err := c.Cache.ReadAt(key, p, off)
	if hit {
		c.hits.Add(1)
	}
	return hit, err
}

// waitFetchesIdle waits until v has no fetch registered (cache fills,
// handoff and parked readahead windows end after the reads that used them
// return) and no readahead window in flight.
func waitFetchesIdle(t *testing.T, v *Volume) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		v.fmu.Lock()
		idle := len(v.inflight) == 0
		v.fmu.Unlock()
		if idle && v.ra.inflight.Load() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("fetches still in progress 10 s after the reads")
		}
	}
}

// TestSeqReadFromFetchedWindows: a cold sequential pass whose readahead
// windows are all filled into the cache gets its bytes from the windows'
// fetched buffers, not by reading them back from the cache. The cache
// answers every read with a miss during the pass, so a read that went to
// it would fetch its window again: the pass must still make one GET per
// record. Afterwards the cache holds every window: a second pass is warm
// (no GET), every chunk a cache hit, bytes checked on both passes.
// Before the change every window the readahead had filled ahead of its
// reader was read back from the cache (fetched again here). The volume's
// clock stands still, so no window's handoffHold ends while a loaded
// machine's reader is slow to reach it.
func TestSeqReadFromFetchedWindows(t *testing.T) {
	const size = 32 << 20
	rs := &remoteStore{Store: openStore(t, "mem://read-park")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)
	c := &blindCache{Cache: openCache(t, t.TempDir(), 256<<20)}
	t.Cleanup(func() { c.Close() })
	clock := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	v, err := p.Open(context.Background(), "v", Options{ReadOnly: true, Cache: c, Logger: testLogger(t), ReadaheadFillBytes: -1, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close(context.Background()) })

	c.blind.Store(true)
	rs.reset(2 * time.Millisecond) // the readahead runs ahead of the reader
	readSeq(t, v, model, 0, size, 1<<20, 1)
	// Each 4 MiB record once; the first read, not yet sequential,
	// fetched its 1 MiB on its own. Under -race about one run in three
	// made one GET more (10: a read that reached its record before the
	// window for it was started fetched on its own), so allow two; reads
	// that went to the cache would refetch every window (22 before the
	// change).
	if got, want := rs.gets.Load(), int64(size/(4<<20))+1+2; got > want {
		t.Errorf("a cold pass whose cache never answers made %d record GETs for %d records: reads went to the cache instead of the fetched windows", got, size/(4<<20))
	}
	if st := v.ReadaheadStats(); st.Windows == 0 {
		t.Fatalf("no readahead on a sequential read: %+v", st)
	}
	waitFetchesIdle(t, v)

	c.blind.Store(false)
	rs.reset(time.Millisecond)
	readSeq(t, v, model, 0, size, 1<<20, 2)
	if got := rs.gets.Load(); got != 0 {
		t.Errorf("second pass made %d record GETs; want all from the cache", got)
	}
	if got, want := c.hits.Load(), int64(size/format.ChunkSize); got != want {
		t.Errorf("second pass: %d cache hits; want one per chunk, %d", got, want)
	}
}

// TestSeqReadParkedEviction reads the first half of a volume written by
// two interleaved streams (as nbdcopy writes: each record holds both
// halves' data, and its last frame the second half's), with a budget of
// two windows. The stream reads every window only in part and never its
// last frame, so no window is ever consumed: parked windows must give
// their room to new ones (evicted; their bytes are read from the cache)
// instead of blocking the readahead until handoffHold, so the readahead
// keeps starting the windows (a blocked one left them to the reads'
// own fetches). Bytes stay right, and no record is fetched twice.
func TestSeqReadParkedEviction(t *testing.T) {
	const size = 32 << 20
	rs := &remoteStore{Store: openStore(t, "mem://read-park-evict")}
	p := initPool(t, rs)
	model := writeModelOrdered(t, p, "v", size, -1, func(offs []int64, _ *rand.Rand) {
		half := append([]int64(nil), offs[len(offs)/2:]...)
		for i := len(offs)/2 - 1; i >= 0; i-- {
			offs[2*i], offs[2*i+1] = offs[i], half[i]
		}
	})
	// The clock stands still: no handoffHold ends, only evictions.
	clock := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	v := openCold(t, p, "v", Options{ReadaheadBytes: 2 * 4 << 20, ReadaheadFillBytes: -1, Clock: clock})
	rs.reset(time.Millisecond)
	readSeq(t, v, model, 0, size/2, 256<<10, 4)
	st := v.ReadaheadStats()
	records := int64(size / (4 << 20))
	t.Logf("%d GETs, %d parked windows evicted, readahead %+v", rs.gets.Load(), v.ra.evicted.Load(), st)
	if v.ra.evicted.Load() == 0 {
		t.Error("no parked window was evicted, though none is read to its end and the budget holds two")
	}
	if st.Windows < uint64(records)/2 {
		t.Errorf("the readahead started %d windows for %d records: parked windows blocked it", st.Windows, records)
	}
	if st.PeakInFlight > 2 {
		t.Errorf("%d readahead windows in flight at once; the budget allows 2", st.PeakInFlight)
	}
	if got := rs.gets.Load(); got > records+1 {
		t.Errorf("%d record GETs for %d records: evicted windows were fetched again", got, records)
	}
	// Once no window is in flight, the parked ones alone are within the
	// budget (without eviction they pile up: 5 here).
	for deadline := time.Now().Add(10 * time.Second); v.ra.inflight.Load() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("readahead windows still in flight 10 s after the reads")
		}
	}
	v.ra.mu.Lock()
	parked := len(v.ra.parked)
	v.ra.mu.Unlock()
	if parked > 2 {
		t.Errorf("%d windows parked after the pass; the budget allows 2", parked)
	}
}

// TestSeqReadCorruptFrameInWindow: a frame that fails its CRC-32C inside a
// readahead window is never handed to a reader: the window's frames end
// before it, the read covering it fails with format.ErrCorrupt (again when
// read a second time: it never reached the cache), and the reads around
// it, from the same window and the ones after, return the right bytes.
func TestSeqReadCorruptFrameInWindow(t *testing.T) {
	const size = 16 << 20
	ctx := context.Background()
	rs := &remoteStore{Store: openStore(t, "mem://read-park-corrupt")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)

	// Flip a data byte of the chunk holding volume offset bad, in the
	// third record (its window is fetched by the readahead, ahead of the
	// reader).
	const bad = 8<<20 + 30*format.ChunkSize + 100
	v0 := openCold(t, p, "v", Options{})
	var loc extmap.Extent
	v0.mu.Lock()
	v0.m.Lookup(bad, 1, func(e extmap.Extent) bool { loc = e; return false })
	vol := v0.vols[loc.Loc.Vol]
	v0.mu.Unlock()
	roff := loc.Loc.Off + (bad - loc.Start) // the byte's offset in the record's data
	if roff/format.ChunkSize == 0 || roff/format.ChunkSize >= 63 {
		t.Fatalf("bad byte in chunk %d of its record; want one inside a window", roff/format.ChunkSize)
	}
	key := format.LogKey(vol, loc.Loc.Seq)
	obj, err := rs.Store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	obj[format.FramePos(roff/format.ChunkSize)+format.FrameHeader+int64(roff%format.ChunkSize)] ^= 0x40
	if err := rs.Store.Put(ctx, key, obj); err != nil {
		t.Fatal(err)
	}

	v := openCold(t, p, "v", Options{ReadaheadFillBytes: -1})
	rs.reset(time.Millisecond)
	buf := make([]byte, 1<<20)
	read := func(pass int) {
		for off := int64(0); off < size; off += int64(len(buf)) {
			err := v.ReadAt(ctx, buf, off)
			if off <= bad && bad < off+int64(len(buf)) {
				if !errors.Is(err, format.ErrCorrupt) {
					t.Errorf("pass %d: read [%d,+%d) over a corrupt frame: err %v; want format.ErrCorrupt", pass, off, len(buf), err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("pass %d: read at %d: %v", pass, off, err)
			}
			if !bytes.Equal(buf, model[off:off+int64(len(buf))]) {
				t.Fatalf("pass %d: read at %d differs from the model at +%d", pass, off, firstDiff(buf, model[off:off+int64(len(buf))]))
			}
		}
	}
	read(1)
	if st := v.ReadaheadStats(); st.Windows == 0 {
		t.Fatalf("no readahead on a sequential read: %+v", st)
	}
	waitFetchesIdle(t, v)
	read(2)
	// The chunks of the damaged window around the bad one, read one by one.
	for _, off := range []int64{bad - format.ChunkSize, bad + format.ChunkSize} {
		b := make([]byte, 4096)
		if err := v.ReadAt(ctx, b, off); err != nil {
			t.Fatalf("read at %d next to the corrupt chunk: %v", off, err)
		}
		if !bytes.Equal(b, model[off:off+4096]) {
			t.Fatalf("read at %d next to the corrupt chunk differs from the model", off)
		}
	}
}

// TestSeqReadWindowsStayAhead: a cold sequential read with the readahead
// at full depth reads nearly every chunk from the windows it fetched, not
// back from the cache: the stream's depth leaves room in the budget for
// the windows its reads are still in, so a new window does not evict the
// one about to be read.
func TestSeqReadWindowsStayAhead(t *testing.T) {
	const size = 96 << 20
	rs := &remoteStore{Store: openStore(t, "mem://windows-ahead")}
	p := initPool(t, rs)
	model := writeModel(t, p, "v", size, false, -1)
	const budget = 32 << 20 // 8 windows of 4 MiB
	v := openCold(t, p, "v", Options{ReadaheadBytes: budget})
	rs.reset(50 * time.Millisecond)
	readSeq(t, v, model, 0, size, 1<<20, 1)
	st := v.ReadaheadStats()
	t.Logf("readahead %+v", st)
	if st.DeepestStream < 2 {
		t.Fatalf("the stream reached depth %d; the test needs the readahead deep", st.DeepestStream)
	}
	total := st.ChunkReadsFromWindows + st.ChunkReadsFromCache
	if total < size/(64<<10) {
		t.Fatalf("%d chunk reads counted for %d chunks", total, size/(64<<10))
	}
	// With the stream's depth at the whole budget, 176-256 chunk reads
	// (3-4 windows' worth) came back from the cache; now 0-64, under -race
	// too. A window evicted in full is 64.
	if st.ChunkReadsFromCache > 2*64 {
		t.Errorf("%d of %d chunk reads came back from the cache (%d windows evicted before their stream read them); want at most two windows' worth",
			st.ChunkReadsFromCache, total, st.Evicted)
	}
}
