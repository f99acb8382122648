package volume

import (
	"sync"
	"sync/atomic"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

// Readahead sized to the bandwidth-delay product.
//
// One GET delivers at most the store's per-stream bandwidth B, after its
// first-byte latency L: a window of W bytes takes L + W/B, so a sequential
// reader is only as fast as the store when about B*L/W + 1 windows are in
// flight at once, and more than that when the reader is faster than one
// stream (the store gives parallel requests their own bandwidth). Neither B
// nor L is known in advance, and they change, so each sequential stream
// starts raInitialWindows windows ahead of its reads and doubles that depth
// whenever a read of the stream still had to wait for the store (the pipe
// was not full), up to the memory budget (Options.ReadaheadBytes). Once
// the readahead stays ahead, reads find their data in the cache and the
// depth stops growing. Random reads start no readahead: each stays one GET.
//
// Every window in flight holds one slot of the volume's budget from its
// GET until its frames are in the cache. A window then stays in memory,
// parked, until its stream has read it, so the stream copies the verified
// frames instead of reading them back from the cache; a parked window
// counts in the budget too, but never blocks the readahead: when the
// budget is spent, the oldest parked window is evicted (its bytes are in
// the cache) and its room goes to the new one. So the readahead's memory
// is bounded whatever the streams do, and a window that is read only in
// part (a record holding several streams' data, a stream that stopped)
// costs nothing but its place among the parked.
const (
	raInitialWindows = 4
	// raStreams is how many sequential streams are tracked at once (nbdcopy
	// reads with several connections, each working through its own region;
	// a VM's reads interleave several files).
	raStreams = 8
)

// raStream is one sequential stream's readahead.
type raStream struct {
	start int64  // where the stream began (its fill bound counts from here)
	pos   int64  // highest end of the stream's reads
	next  int64  // volume offset readahead has been issued up to
	depth int    // windows kept ahead of pos
	used  uint64 // last use (ra.tick), to replace the least recently used
}

// readahead is a volume's readahead state.
type readahead struct {
	mu      sync.Mutex // guards streams, tick and recent
	streams [raStreams]raStream
	tick    uint64
	// recent are the windows started last (a ring, twice the budget): a
	// window is started before its fetch registers, and the volume steps
	// of a stream overlap at records' edges, so this keeps a window from
	// being started twice.
	recent  []cache.Key
	nrecent int
	// slots holds one token per window in flight (GET to cache fill), and
	// parked the filled windows waiting for their streams, oldest first.
	// Invariant (checked when a window is started): len(slots) +
	// len(parked) <= maxDepth, the memory budget; a window moving from
	// in flight to parked counts twice for a moment, never zero times.
	slots    chan struct{}
	parked   []*fetchCall
	maxDepth int

	issued   atomic.Uint64 // windows started
	evicted  atomic.Uint64 // parked windows evicted before their streams read them
	inflight atomic.Int32
	peak     atomic.Int32 // most windows in flight at once
	deepest  atomic.Int32 // largest depth any stream reached

	// fromWindow and fromCache count the chunk reads served by copying
	// from fetched frames in memory (a window, or a fetch the read made or
	// waited for) and by reading the cache.
	fromWindow, fromCache atomic.Uint64
}

// ReadaheadStats say what the readahead did since attach.
type ReadaheadStats struct {
	// Windows is the number of record windows fetched ahead of reads.
	Windows uint64
	// PeakInFlight is the most windows that were in flight at once.
	PeakInFlight int
	// DeepestStream is the largest depth (windows ahead) a stream reached.
	DeepestStream int
	// Evicted counts parked windows evicted before their stream read
	// them all (their remaining reads go to the cache).
	Evicted uint64
	// ChunkReadsFromWindows and ChunkReadsFromCache count the reads of a
	// chunk (or part of one) served from fetched frames in memory (a
	// readahead window, or a fetch the read made or waited for) and from
	// the cache: on a cold sequential read nearly all should be the first.
	ChunkReadsFromWindows, ChunkReadsFromCache uint64
}

// ReadaheadStats reports the readahead's counters. Safe for concurrent use.
func (v *Volume) ReadaheadStats() ReadaheadStats {
	return ReadaheadStats{
		Windows:       v.ra.issued.Load(),
		PeakInFlight:  int(v.ra.peak.Load()),
		DeepestStream: int(v.ra.deepest.Load()),
		Evicted:       v.ra.evicted.Load(),

		ChunkReadsFromWindows: v.ra.fromWindow.Load(),
		ChunkReadsFromCache:   v.ra.fromCache.Load(),
	}
}

func (ra *readahead) init(windowBytes int, budget int64) {
	ra.maxDepth = max(1, int(budget/int64(windowBytes)))
	ra.slots = make(chan struct{}, ra.maxDepth)
	ra.recent = make([]cache.Key, 2*ra.maxDepth+raStreams)
	for i := range ra.streams {
		ra.streams[i].pos = -1
	}
}

// stream returns the stream a sequential read of [off, end) belongs to:
// the one whose reads ended nearest to off (within the reordering a queue
// of concurrent reads causes), or else the least recently used slot, reset
// for a new stream. Called with ra.mu held.
func (ra *readahead) stream(off, end, win int64) *raStream {
	ra.tick++
	reach := max(seqSlack*(end-off), win)
	var best, lru *raStream
	bestDist := int64(-1)
	for i := range ra.streams {
		s := &ra.streams[i]
		if lru == nil || s.used < lru.used {
			lru = s
		}
		if s.pos < 0 {
			continue
		}
		d := off - s.pos
		if d < 0 {
			d = -d
		}
		if d <= reach && (bestDist < 0 || d < bestDist) {
			best, bestDist = s, d
		}
	}
	if best == nil {
		best = lru
		*best = raStream{start: off, pos: end, next: end, depth: min(raInitialWindows, ra.streamDepth())}
	}
	best.used = ra.tick
	best.pos = max(best.pos, end)
	return best
}

// readAhead keeps the stream of a sequential read of [off, end) depth
// windows ahead: it starts, in the background, the GETs of the record
// windows mapping the volume range after the stream's reads that are
// neither cached nor being fetched, as far as the budget allows. Nothing
// waits for them; readers that miss meanwhile share their GETs.
func (v *Volume) readAhead(off, end int64) {
	if v.cache == nil {
		return // fetched windows would have nowhere to stay
	}
	win := int64(v.opts.Readahead) * format.ChunkSize
	ra := &v.ra
	ra.mu.Lock()
	defer ra.mu.Unlock()
	s := ra.stream(off, end, win)
	to := min(s.pos+int64(s.depth)*win, v.Size())
	for from := max(s.next, end); from < to; from += win {
		fill := v.opts.ReadaheadFillBytes < 0 || from-s.start < v.opts.ReadaheadFillBytes
		if !v.issueWindows(from, min(from+win, to), fill) {
			s.next = from // the budget is spent: the next read continues here
			return
		}
		s.next = min(from+win, to)
	}
}

// readWaited tells the readahead that a sequential read of [off, end) had
// to wait for the store: its stream was not far enough ahead, so it goes
// twice as deep (within the budget), and issues the extra windows now.
func (v *Volume) readWaited(off, end int64) {
	if v.cache == nil {
		return
	}
	win := int64(v.opts.Readahead) * format.ChunkSize
	ra := &v.ra
	ra.mu.Lock()
	s := ra.stream(off, end, win)
	if deepest := ra.streamDepth(); s.depth < deepest {
		s.depth = min(2*s.depth, deepest)
		if d := int32(s.depth); d > ra.deepest.Load() {
			ra.deepest.Store(d) // under ra.mu: no lost update
		}
	}
	ra.mu.Unlock()
	v.readAhead(off, end)
}

// raReading is how many windows a stream's reads may still be in behind
// the end of its latest read, from which its readahead counts: 1 MiB reads
// at queue depth 8 (the suite's fio job, 8 MiB in flight) span up to 3
// windows of 4 MiB. With 2, 5-8 % of such a cold read came back from the
// cache instead of memory (TestSeqReadWindowsStayAhead); with 3, none.
const raReading = 3

// streamDepth is the most windows a stream reads ahead: the budget less
// the windows its reads are still in. At the whole budget each window a
// stream started evicted the oldest parked one, which its reads were in
// or about to be (half of a cold sequential read came back from the
// cache instead of memory). Called with ra.mu held.
func (ra *readahead) streamDepth() int {
	return max(1, ra.maxDepth-raReading)
}

// startedLately reports whether window k (its first chunk) was started
// lately. Called with ra.mu held.
func (ra *readahead) startedLately(k cache.Key) bool {
	for _, r := range ra.recent {
		if r == k {
			return true
		}
	}
	return false
}

// noteStarted records that window k was started. Called with ra.mu held.
func (ra *readahead) noteStarted(k cache.Key) {
	ra.recent[ra.nrecent%len(ra.recent)] = k
	ra.nrecent++
}

// issueWindows starts the GETs of the record windows (Readahead chunks,
// aligned within their record) that map [from, to) and are neither cached
// nor being fetched. It returns false if the budget ran out first (the
// windows it did start stay started: the next call skips them). fill false
// makes them handoff fetches (not cached). Called with v.ra.mu held.
func (v *Volume) issueWindows(from, to int64, fill bool) bool {
	ahead := uint64(v.opts.Readahead)
	var wbuf [8]cache.Key // each the first chunk of a window
	wins := wbuf[:0]
	v.mu.Lock()
	if v.usableLocked() != nil {
		v.mu.Unlock()
		return true
	}
	v.m.Lookup(uint64(from), uint64(to-from), func(e extmap.Extent) bool {
		if e.Loc.Vol == 0 && v.pending[e.Loc.Seq] != nil {
			return true // still in memory
		}
		for c := e.Loc.Off / format.ChunkSize; c*format.ChunkSize < e.Loc.Off+e.Len; c = c - c%ahead + ahead {
			k := cache.Key{Vol: v.vols[e.Loc.Vol], Seq: e.Loc.Seq, Chunk: uint32(c)}
			// The window's first chunk it covers: the cache check below
			// looks at it, and the window starts at its aligned base.
			dup := false
			for _, w := range wins {
				if w.Vol == k.Vol && w.Seq == k.Seq && uint64(w.Chunk)/ahead == c/ahead {
					dup = true
					break
				}
			}
			if !dup {
				wins = append(wins, k)
			}
		}
		return true
	})
	v.mu.Unlock()
	ra := &v.ra
	for _, k := range wins {
		if v.ctx.Err() != nil {
			return true
		}
		if h, ok := v.cache.(interface{ Has(cache.Key) bool }); ok && h.Has(k) {
			continue
		}
		first := uint32(uint64(k.Chunk) - uint64(k.Chunk)%ahead)
		if v.fetching(k) {
			continue
		}
		wk := cache.Key{Vol: k.Vol, Seq: k.Seq, Chunk: first}
		if ra.startedLately(wk) {
			continue
		}
		if len(ra.slots)+len(ra.parked) >= ra.maxDepth {
			ra.evictLocked() // its bytes are in the cache: the room is worth more ahead
		}
		select {
		case ra.slots <- struct{}{}:
		default:
			return false // every slot is a window in flight
		}
		ra.noteStarted(wk)
		ra.issued.Add(1)
		if n := ra.inflight.Add(1); n > ra.peak.Load() {
			for p := ra.peak.Load(); n > p && !ra.peak.CompareAndSwap(p, n); p = ra.peak.Load() {
			}
		}
		mode := fetchPark
		if !fill {
			mode = fetchHandoff
		}
		go func() {
			defer func() { ra.inflight.Add(-1); <-ra.slots }()
			c, err := v.fetchChunk(v.ctx, k, first, int(ahead), nil, mode)
			if err != nil {
				return // best effort: a reader that needs it fetches it and reports
			}
			<-c.filled // the buffer is the slot's until the cache (or, for a handoff, the stream) has the frames
			c.release()
		}()
	}
	return true
}

// park adds a filled window to the parked ones (see readahead.slots).
func (ra *readahead) park(c *fetchCall) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.parked = append(ra.parked, c)
}

// unpark removes c from the parked windows, if it is still there.
func (ra *readahead) unpark(c *fetchCall) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for i, p := range ra.parked {
		if p == c {
			ra.parked = append(ra.parked[:i], ra.parked[i+1:]...)
			return
		}
	}
}

// evictLocked ends the oldest parked window's wait for its stream: its
// reads go to the cache from now on, and its buffer is recycled once the
// reads in progress release it. Called with ra.mu held.
func (ra *readahead) evictLocked() {
	if len(ra.parked) == 0 {
		return
	}
	c := ra.parked[0]
	ra.parked = append(ra.parked[:0], ra.parked[1:]...)
	ra.evicted.Add(1)
	c.consumedOnce.Do(func() { close(c.consumed) })
}

// fetching reports whether a fetch in progress covers the chunk.
func (v *Volume) fetching(k cache.Key) bool {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	for _, c := range v.inflight[recKey{k.Vol, k.Seq}] {
		if c.covers(k.Chunk) {
			return true
		}
	}
	return false
}
