package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

type extmapExtent = extmap.Extent

// piece is a part of a read served from a record in the object store, or
// (zero) an unmapped range that reads as zeros.
type piece struct {
	dst  []byte
	vol  string
	seq  uint64
	off  uint64
	zero bool
}

// ReadAt implements blockdev.Device.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.checkRange(off, len(p)); err != nil {
		return err
	}
	var buf [8]piece
	pieces := buf[:0]
	start := uint64(off)
	pos := start // end of what the map lookup has covered so far
	v.mu.Lock()
	if err := v.usableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	v.m.Lookup(start, uint64(len(p)), func(e extmap.Extent) bool {
		if e.Start > pos {
			pieces = append(pieces, piece{dst: p[pos-start : e.Start-start], zero: true})
		}
		pos = e.End()
		dst := p[e.Start-start : e.End()-start]
		if e.Loc.Vol == 0 {
			if seg := v.pending[e.Loc.Seq]; seg != nil {
				seg.b.ReadData(dst, e.Loc.Off)
				return true
			}
		}
		pieces = append(pieces, piece{dst: dst, vol: v.vols[e.Loc.Vol], seq: e.Loc.Seq, off: e.Loc.Off})
		return true
	})
	v.mu.Unlock()
	if end := start + uint64(len(p)); pos < end {
		pieces = append(pieces, piece{dst: p[pos-start:], zero: true})
	}
	end := off + int64(len(p))
	sequential := v.seq.follows(off, end)
	ahead := 1
	if sequential {
		ahead = v.opts.Readahead
	}
	// Serve what the cache has first, then fetch the rest: pieces from
	// different records (a range written out of order, or by several
	// writers at once, is spread over many records) are fetched in parallel.
	var mbuf [8]piece
	misses := mbuf[:0]
	for _, pc := range pieces {
		if pc.zero {
			clear(pc.dst)
			continue
		}
		if rest := v.readCached(pc); len(rest.dst) > 0 {
			misses = append(misses, rest)
		}
	}
	if sequential {
		// Before this read waits for its own misses, so the windows after
		// it are on their way meanwhile.
		v.readAhead(off, end)
	}
	if len(misses) == 0 {
		return nil
	}
	// A large miss is fetched as several ranged GETs in parallel (one per
	// window), not one long serial response: a store's bandwidth is per
	// stream.
	span := uint64(ahead) * format.ChunkSize
	if !sequential {
		span = splitChunks * format.ChunkSize
	}
	misses = splitPieces(misses, span)
	var err error
	var waited bool
	switch len(misses) {
	case 1:
		var w atomic.Bool
		err = v.readPiece(ctx, misses[0], ahead, &w)
		waited = w.Load()
	default:
		w := new(atomic.Bool) // shared by the closures (only on this cold path)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(maxParallelFetches)
		ra := ahead // assigned once, so the closures copy it (ahead stays on the stack)
		for _, pc := range misses {
			g.Go(func() error { return v.readPiece(gctx, pc, ra, w) })
		}
		err = g.Wait()
		waited = w.Load()
	}
	if err != nil {
		return fmt.Errorf("read %s at %d: %w", v.desc.Name, off, err)
	}
	if sequential && waited {
		v.readWaited(off, end)
	}
	return nil
}

// splitChunks is the size, in chunks, of the parallel GETs a large random
// read is split into (1 MiB; sequential reads split at readahead windows).
const splitChunks = 16

// splitPieces splits the pieces longer than span bytes at record offsets
// that are multiples of span, so each part is fetched by its own GET in
// parallel with the others. Pieces up to span stay whole (one GET), even
// when they straddle a boundary.
func splitPieces(pieces []piece, span uint64) []piece {
	long := false
	for _, pc := range pieces {
		if uint64(len(pc.dst)) > span {
			long = true
			break
		}
	}
	if !long {
		return pieces
	}
	out := make([]piece, 0, len(pieces)+4)
	for _, pc := range pieces {
		for uint64(len(pc.dst)) > span {
			n := span - pc.off%span
			part := pc
			part.dst = pc.dst[:n]
			out = append(out, part)
			pc.dst = pc.dst[n:]
			pc.off += n
		}
		if len(pc.dst) > 0 {
			out = append(out, pc)
		}
	}
	return out
}

// seqDetector recognises sequential reads: a read is sequential if it
// starts where one of the last few reads ended, or a little after (up to
// seqSlack reads of its size, as when it overtook its predecessors).
// Concurrent reads of one stream (queue depth > 1) enter ReadAt in whatever
// order the scheduler runs them.
type seqDetector struct {
	ends [16]atomic.Int64
	next atomic.Uint32
}

func (d *seqDetector) init() {
	for i := range d.ends {
		d.ends[i].Store(-1)
	}
}

const seqSlack = 8

// follows records a read of [off, end) and reports whether it starts at or
// shortly after the end of a recent read.
func (d *seqDetector) follows(off, end int64) bool {
	hit := false
	for i := range d.ends {
		if e := d.ends[i].Load(); e >= 0 && off >= e && off-e <= seqSlack*(end-off) {
			hit = true
			break
		}
	}
	d.ends[d.next.Add(1)%uint32(len(d.ends))].Store(end)
	return hit
}

// maxParallelFetches bounds the concurrent fetches of one read.
const maxParallelFetches = 8

// readCached fills the leading chunks of pc.dst that a finished fetch still
// holds in memory (see fetched) or the cache holds, and returns the rest of
// the piece (from its first missing chunk).
func (v *Volume) readCached(pc piece) piece {
	if v.cache == nil {
		return pc // nothing stays registered after its GET without a cache
	}
	var fc *fetchCall
	defer func() {
		if fc != nil {
			fc.release()
		}
	}()
	for len(pc.dst) > 0 {
		within := int(pc.off % format.ChunkSize)
		n := min(len(pc.dst), format.ChunkSize-within)
		key := cache.Key{Vol: pc.vol, Seq: pc.seq, Chunk: uint32(pc.off / format.ChunkSize)}
		if fc != nil && !fc.holds(key.Chunk) {
			fc.release()
			fc = nil
		}
		if fc == nil {
			fc = v.fetched(key)
		}
		if fc != nil {
			if !fc.copyOut(pc.dst[:n], key.Chunk, within) {
				return pc // a short frame: readPiece reports it
			}
			v.ra.fromWindow.Add(1)
		} else if hit, err := v.cache.ReadAt(key, pc.dst[:n], within); err != nil || !hit {
			return pc
		} else {
			v.ra.fromCache.Add(1)
		}
		pc.dst = pc.dst[n:]
		pc.off += uint64(n)
	}
	return pc
}

// readPiece fills pc.dst from the cache or the record's chunks. A miss
// fetches, in one GET, every chunk the rest of the piece needs (at least
// ahead when there is a cache to keep the extra ones), and the piece's
// later chunks are then copied from that fetch rather than read back from
// the cache.
func (v *Volume) readPiece(ctx context.Context, pc piece, ahead int, waited *atomic.Bool) error {
	dst, off := pc.dst, pc.off
	var fc *fetchCall // the latest fetch made for this piece; fc.frames[i] is chunk fcFirst+i
	var fcFirst uint64
	defer func() {
		if fc != nil {
			fc.release()
		}
	}()
	for len(dst) > 0 {
		chunk := off / format.ChunkSize
		within := int(off % format.ChunkSize)
		n := min(len(dst), format.ChunkSize-within)
		var data []byte
		key := cache.Key{Vol: pc.vol, Seq: pc.seq, Chunk: uint32(chunk)}
		if fc == nil || !fc.holds(key.Chunk) {
			if c := v.fetched(key); c != nil {
				if fc != nil {
					fc.release()
				}
				fc, fcFirst = c, uint64(c.first)
			}
		}
		if fc != nil && fc.holds(key.Chunk) {
			data = fc.frames[chunk-fcFirst]
			v.ra.fromWindow.Add(1)
		} else {
			hit := false
			if v.cache != nil {
				var err error
				if hit, err = v.cache.ReadAt(key, dst[:n], within); err != nil {
					hit = false
				}
				if hit {
					v.ra.fromCache.Add(1)
				}
			}
			if !hit {
				need := (within + len(dst) + format.ChunkSize - 1) / format.ChunkSize
				first, count := uint32(chunk), need
				if v.cache != nil && ahead > 1 {
					// Sequential: fetch the aligned window of ahead chunks
					// around this one (a whole default record), so reads
					// of the record in any order, by concurrent readers
					// too, share one GET.
					first = uint32(chunk - chunk%uint64(ahead))
					count = max(ahead, int(uint64(chunk)-uint64(first))+need)
				}
				c, err := v.fetchChunk(ctx, key, first, count, waited, fetchFill)
				if err != nil {
					return err
				}
				if fc != nil {
					fc.release()
				}
				fc, fcFirst = c, uint64(c.first)
				data = c.frames[chunk-fcFirst]
				v.ra.fromWindow.Add(1)
			}
		}
		if data != nil {
			if len(data) < within+n {
				return fmt.Errorf("record %d of volume %s chunk %d: %w: %d bytes, need %d", pc.seq, pc.vol, chunk, format.ErrCorrupt, len(data), within+n)
			}
			copy(dst[:n], data[within:within+n])
			if fc != nil && chunk >= fcFirst {
				fc.readTo(chunk-fcFirst, within+n)
			}
		}
		dst = dst[n:]
		off += uint64(n)
	}
	return nil
}

// recKey names a record whose chunks are being fetched.
type recKey struct {
	vol string
	seq uint64
}

// fetchCall is one GET of chunks first .. first+count-1 of a record, shared
// by the concurrent misses of any chunk in that range. frames[i] is the
// verified data of chunk first+i (the list may end early: past the record's
// data, or at a bad frame). The frames live in a pooled buffer: everyone
// fetchChunk returned the call to must release it once done with the
// frames, and the last release recycles the buffer.
type fetchCall struct {
	first uint32
	count int
	done  chan struct{}
	// filled is closed once the call needs no readahead budget slot: its
	// frames are in the cache (or will not be), and a handoff's readers
	// are done with it (a parked call is counted in readahead.parked).
	filled chan struct{}
	frames [][]byte
	sums   []cache.Sums // per frame, for the cache
	err    error
	buf    *[]byte    // pooled buffer behind frames, nil if not pooled
	pool   *sync.Pool // where buf goes back
	// out is the pooled buffer packed frames are decompressed into (nil
	// if none or not pooled), and outPool where it goes back.
	out     *[]byte
	outPool *sync.Pool
	refs    atomic.Int32
	mode    fetchMode
	// consumed, if not nil (a fetchHandoff or fetchPark call), is closed
	// when a reader read the call's last frame to the end (the stream has
	// passed it) or, for a parked call, when the readahead evicts it; the
	// call stays registered, for the readers to share, until then or
	// until handoffHold has passed.
	consumed     chan struct{}
	consumedOnce sync.Once
}

// fetchMode says what a fetch does with its frames besides handing them to
// the readers waiting for it.
type fetchMode uint8

const (
	// fetchFill puts the frames in the cache; the call is unregistered
	// once they are there, and later reads use the cache.
	fetchFill fetchMode = iota
	// fetchHandoff keeps the frames out of the cache (a long stream past
	// Options.ReadaheadFillBytes): the call stays registered, holding its
	// readahead budget slot, until its stream has read it.
	fetchHandoff
	// fetchPark is a readahead fill window: the frames go to the cache,
	// then the call stays registered (parked) until its stream has read
	// it, so the stream's reads copy the frames already verified instead
	// of reading them back from the cache (a pread and a checksum of every
	// byte). A parked call gives its budget slot back once filled: the
	// readahead evicts the oldest parked call whenever it needs the room,
	// since the cache has its bytes.
	fetchPark
)

// handoffHold bounds how long a handoff or parked fetch waits for its
// readers (a handoff holds its readahead budget slot meanwhile) when they
// never read its last frame: a stream that stopped, or a window whose tail
// maps other volume ranges.
const handoffHold = 2 * time.Second

// holds reports whether c's frames include chunk. Only for a finished call
// the caller holds a reference to.
func (c *fetchCall) holds(chunk uint32) bool {
	return chunk >= c.first && uint64(chunk-c.first) < uint64(len(c.frames))
}

// copyOut copies frame chunk (c.holds it) from byte within into dst and
// notes the read (readTo). False if the frame is too short for that, which
// only a corrupt record can cause: the caller reports it.
func (c *fetchCall) copyOut(dst []byte, chunk uint32, within int) bool {
	data := c.frames[chunk-c.first]
	if len(data) < within+len(dst) {
		return false
	}
	copy(dst, data[within:])
	c.readTo(uint64(chunk-c.first), within+len(dst))
	return true
}

// fetched returns a finished fetch, still registered, whose verified frames
// hold chunk key.Chunk (a parked or handoff readahead window, or a fetch
// whose cache fill is under way), referenced for the caller to release;
// nil if there is none. Copying from it spares the read back from the
// cache (a pread, and a checksum of bytes checked when they were fetched).
func (v *Volume) fetched(key cache.Key) *fetchCall {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	for _, c := range v.inflight[recKey{key.Vol, key.Seq}] {
		select {
		case <-c.done:
		default:
			continue // a miss waits for it in fetchChunk
		}
		// frames is set before done is closed, and a registered call
		// holds a reference (its fill's), so it is not recycled meanwhile.
		if c.holds(key.Chunk) {
			c.refs.Add(1)
			return c
		}
	}
	return nil
}

// readTo notes that a reader read frame i of c up to byte end. Reading the
// last frame to its end releases a handoff or parked fetch: a sequential
// stream reads a window's frames in order, so it is done with the window.
func (c *fetchCall) readTo(i uint64, end int) {
	if c == nil || c.consumed == nil || i != uint64(len(c.frames)-1) || end < len(c.frames[i]) {
		return
	}
	c.consumedOnce.Do(func() { close(c.consumed) })
}

func (c *fetchCall) covers(chunk uint32) bool {
	return chunk >= c.first && uint64(chunk) < uint64(c.first)+uint64(c.count)
}

func (c *fetchCall) release() {
	if c.refs.Add(-1) == 0 && c.buf != nil {
		c.pool.Put(c.buf)
		if c.out != nil {
			c.outPool.Put(c.out)
		}
		c.buf, c.out, c.frames = nil, nil, nil
	}
}

// Fetch buffers in two sizes: up to 16 frames (1 MiB of data: random reads,
// 1 MiB pieces) and up to 64 (a default readahead, a whole 4 MiB record).
// They are sized for the largest frames (sealed packed ones stored raw)
// plus fetchTail, the room a window from a record's first frame uses to
// reach the record's end (see fetchFrames).
const (
	smallFetch = 16*format.MaxPackedFrame + fetchTail
	largeFetch = 64*format.MaxPackedFrame + fetchTail
)

// fetchTail is how many bytes past its last frame a multi-frame fetch from
// a record's first frame asks for, so that when the window holds all the
// record's frames the GET covers the whole object, trailer included: a
// store may serve a whole object far more cheaply than a part of it
// (versitygw's posix backend sends a whole object with sendfile(2) but
// copies any other range through a 32 KiB user-space buffer: 3.6x its CPU
// per MiB on a cold sequential read, BENCHMARKS.md). Stores clamp a range
// at the object's end, so the extra bytes cost nothing when the trailer is
// shorter, and at most fetchTail when the record is longer than the window.
const fetchTail = 16 << 10

// fetchBufs recycles fetch buffers of the two sizes.
type fetchBufs struct{ small, large sync.Pool }

func newFetchBufs() *fetchBufs {
	b := &fetchBufs{}
	b.small.New = func() any { b := make([]byte, smallFetch); return &b }
	b.large.New = func() any { b := make([]byte, largeFetch); return &b }
	return b
}

// of returns the pool of the smallest buffers that hold n bytes, nil if
// none does.
func (b *fetchBufs) of(n int) *sync.Pool {
	switch {
	case n <= smallFetch:
		return &b.small
	case n <= largeFetch:
		return &b.large
	}
	return nil
}

// fetchChunk returns a fetch holding chunk key.Chunk: one in progress that
// covers it, or a new GET of chunks first .. first+count-1 (first <=
// key.Chunk < first+count). On success the caller must release the
// returned call; its frames hold key.Chunk at index key.Chunk-first.
// waited, if not nil, is set when the caller had to wait for the store (a
// new GET, or one still in progress), which is what grows the readahead.
//
// mode says what becomes of the frames (see fetchMode); it applies only if
// this call starts the GET.
func (v *Volume) fetchChunk(ctx context.Context, key cache.Key, first uint32, count int, waited *atomic.Bool, mode fetchMode) (*fetchCall, error) {
	rk := recKey{key.Vol, key.Seq}
	v.fmu.Lock()
	for _, c := range v.inflight[rk] {
		if !c.covers(key.Chunk) {
			continue
		}
		c.refs.Add(1)
		v.fmu.Unlock()
		select {
		case <-c.done:
		default:
			if waited != nil {
				waited.Store(true)
			}
			select {
			case <-c.done:
			case <-ctx.Done():
				c.release()
				return nil, ctx.Err()
			}
		}
		if c.err == nil && int(key.Chunk-c.first) < len(c.frames) {
			return c, nil
		}
		c.release()
		if c.err != nil && key.Chunk == c.first {
			return nil, c.err
		}
		// The shared fetch ended before our chunk (or failed for another
		// one): fetch it ourselves.
		v.fmu.Lock()
		break
	}
	c := &fetchCall{first: first, count: count, done: make(chan struct{}), filled: make(chan struct{})}
	if v.cache == nil {
		mode = fetchFill // nothing to hold the frames for: no readahead without a cache
	}
	c.mode = mode
	if mode != fetchFill {
		c.consumed = make(chan struct{})
	}
	c.refs.Store(1)
	v.inflight[rk] = append(v.inflight[rk], c)
	v.fmu.Unlock()
	if waited != nil {
		waited.Store(true)
	}

	k := key
	k.Chunk = first
	endWatch := v.watchRead(format.LogKey(key.Vol, key.Seq))
	c.err = v.fetchFrames(ctx, k, c)
	endWatch(c.err)
	close(c.done)
	if c.err == nil && int(key.Chunk-first) >= len(c.frames) {
		// The window ended (at a bad frame) before our chunk: fetch from
		// our chunk itself, which reports its corruption if it is bad.
		c.err = fmt.Errorf("record %d of volume %s: frames %d.. unreadable", key.Seq, key.Vol, first+uint32(len(c.frames)))
	}
	if c.err != nil || v.cache == nil {
		v.unregister(rk, c)
		close(c.filled)
		if c.err != nil {
			c.release()
			if first != key.Chunk {
				return v.fetchChunk(ctx, key, key.Chunk, count-int(key.Chunk-first), waited, mode)
			}
			return nil, c.err
		}
		return c, nil
	}
	// Fill the cache off the readers' path. The call stays registered (and
	// referenced) until its frames are in the cache, and a handoff or
	// parked one until its stream has read them, so a read meanwhile
	// shares its frames instead of fetching or reading them back.
	c.refs.Add(1)
	go func() {
		defer c.release()
		if c.mode != fetchHandoff {
			v.cacheFrames(key, c)
		}
		if c.mode == fetchPark {
			v.ra.park(c)
			close(c.filled) // the budget counts it among the parked now
			v.awaitReaders(c)
			v.ra.unpark(c)
			v.unregister(rk, c)
			return
		}
		if c.mode == fetchHandoff {
			v.awaitReaders(c)
		}
		v.unregister(rk, c)
		close(c.filled)
	}()
	return c, nil
}

// awaitReaders waits until c's stream has read it (or, parked, it was
// evicted), for at most handoffHold on the volume's clock.
func (v *Volume) awaitReaders(c *fetchCall) {
	t := v.opts.Clock.NewTicker(handoffHold)
	defer t.Stop()
	select {
	case <-c.consumed:
	case <-t.C():
	case <-v.ctx.Done():
	}
}

// unregister removes c from the fetches in progress.
func (v *Volume) unregister(rk recKey, c *fetchCall) {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	calls := v.inflight[rk]
	for i, x := range calls {
		if x == c {
			calls = append(calls[:i], calls[i+1:]...)
			break
		}
	}
	if len(calls) == 0 {
		delete(v.inflight, rk)
	} else {
		v.inflight[rk] = calls
	}
}

// cacheFrames puts a fetch's frames in the cache.
func (v *Volume) cacheFrames(key cache.Key, c *fetchCall) {
	sp, summed := v.cache.(summedPutter)
	for i, data := range c.frames {
		k := key
		k.Chunk = c.first + uint32(i)
		var err error
		if summed {
			err = sp.PutSummed(k, data, &c.sums[i])
		} else {
			err = v.cache.Put(k, data)
		}
		if err != nil {
			return // closed, or a failing slab: the data was served anyway
		}
	}
}

// summedPutter is implemented by caches that take precomputed sub-block
// sums (cache.Cache), so a fetched chunk's bytes are checksummed only once.
type summedPutter interface {
	PutSummed(key cache.Key, data []byte, sums *cache.Sums) error
}

// fetchFrames GETs frames c.first .. c.first+c.count-1 in one request into
// a pooled buffer and verifies them into c.frames and c.sums (at least the
// first frame; the list stops before the first frame that does not verify,
// which past the record's data section is the trailer). Transient errors
// are retried; a checksum failure of the first frame is retried once, then
// reported.
func (v *Volume) fetchFrames(ctx context.Context, key cache.Key, c *fetchCall) error {
	objKey := format.LogKey(key.Vol, key.Seq)
	stride, pos := format.FrameSize, format.FramePos(uint64(key.Chunk))
	if v.key != nil {
		stride, pos = format.SealedFrameSize, format.SealedFramePos(uint64(key.Chunk))
	}
	size := c.count * stride
	ft, packed, err := v.frameTable(ctx, key.Vol, key.Seq)
	if err != nil {
		return err
	}
	outSize := 0 // decompressed bytes the fetched frames can hold
	if packed {
		// Frames have variable sizes: the table says where they are.
		if int(key.Chunk) >= ft.Frames() {
			return fmt.Errorf("record %d of volume %s: %w: chunk %d beyond its %d frames", key.Seq, key.Vol, format.ErrCorrupt, key.Chunk, ft.Frames())
		}
		end := min(int(key.Chunk)+c.count, ft.Frames())
		pos, size = int64(ft.Off[key.Chunk]), int(ft.Off[end]-ft.Off[key.Chunk])
		outSize = (end - int(key.Chunk)) * format.ChunkSize
	}
	var buf []byte
	c.pool = v.pool.fetch.of(size)
	get := size // bytes asked of the store: the frames, or up to fetchTail more
	if pos == 0 && c.count > 1 {
		get += fetchTail
	}
	if c.pool != nil {
		c.buf = c.pool.Get().(*[]byte)
		get = min(get, cap(*c.buf))
		buf = (*c.buf)[:get]
	} else {
		buf = make([]byte, size)
	}
	var out []byte
	if packed {
		// Sized by the frames the record has, not by the window asked
		// for: a readahead window over a small record is one frame.
		if c.pool != nil {
			c.outPool = v.pool.fetch.of(outSize)
		}
		if c.outPool != nil {
			c.out = c.outPool.Get().(*[]byte)
			out = (*c.out)[:outSize]
		} else {
			out = make([]byte, outSize)
		}
	}
	var lastErr error
	backoff := 20 * time.Millisecond
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff) {
			return ctx.Err()
		}
		backoff *= 2
		var progress func(int)
		fv := frameVerifier{c: c}
		if !packed && v.key == nil {
			progress = func(n int) { _ = fv.check(buf[:min(n, size)], false) }
		}
		n, err := v.readRequest(ctx, objKey, pos, buf, progress)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				return err
			}
			continue
		}
		b := buf[:min(n, size)] // the frames asked for, not the tail
		switch {
		case packed:
			err = openPackedFrames(c, b, ft, v.key, key.Vol, key.Seq, out)
		case v.key != nil:
			err = openFrames(c, b, v.key, key)
		default:
			err = fv.check(b, true)
		}
		if err != nil {
			lastErr = fmt.Errorf("record %d of volume %s chunk %d: %w", key.Seq, key.Vol, key.Chunk, err)
			v.log.Error("corrupt chunk from object store; refetching", "seq", key.Seq, "chunk", key.Chunk, "err", err)
			if errors.Is(err, format.ErrCorrupt) && attempt >= 1 {
				return lastErr
			}
			continue
		}
		return nil
	}
	return lastErr
}

// openFrames is verifyFrames for sealed frames (an encrypted volume): each
// is authenticated and decrypted in place with k, as chunk first+i of
// record key, so c.frames hold plaintext. The cache's sums are taken of
// the plaintext: the cache holds what reads return.
func openFrames(c *fetchCall, b []byte, k *format.DataKey, key cache.Key) error {
	nf := min(c.count, (len(b)+format.SealedFrameSize-1)/format.SealedFrameSize)
	c.frames = make([][]byte, 0, nf)
	c.sums = make([]cache.Sums, nf)
	for i := 0; i < nf; i++ {
		lo := i * format.SealedFrameSize
		frame := b[lo:min(len(b), lo+format.SealedFrameSize)]
		data, err := k.OpenFrame(frame, key.Vol, key.Seq, uint64(key.Chunk)+uint64(i), -1)
		if err != nil {
			if i == 0 {
				return err
			}
			break // past the data section (the trailer), or a bad later frame: fetched on its own
		}
		cache.SubBlockSums(data, &c.sums[i])
		c.frames = append(c.frames, data)
	}
	return nil
}

// verifyFrames checks the frames in b (fetched from chunk c.first's frame
// position) into c.frames and c.sums. Each frame's CRC-32C is derived from
// its per-4 KiB sums, which the cache keeps, so the bytes are read once. An
// error means the first frame is bad; later bad frames end the list.
func verifyFrames(c *fetchCall, b []byte) error {
	fv := frameVerifier{c: c}
	return fv.check(b, true)
}

// frameVerifier is verifyFrames over a body that is still arriving: each
// check(b, false) verifies the whole frames b holds that the last did not
// (the objstore.ProgressGetter callback, so the CRC-32C reads bytes still
// in the CPU's cache: checking a 4 MiB window after it arrived read it all
// back from memory, a tenth of serve's CPU on a cold sequential read), and
// the final check(b, true) the rest, with verifyFrames' rules. A frame
// that would end the list or fail is left to the final check, so the
// outcome is verifyFrames' on the whole body.
type frameVerifier struct {
	c       *fetchCall
	started bool
	next    int  // frames verified
	paused  bool // a frame did not verify before the end: wait for the final check
}

func (fv *frameVerifier) check(b []byte, final bool) error {
	c := fv.c
	if !fv.started {
		fv.started = true
		c.frames, c.sums = make([][]byte, 0, c.count), make([]cache.Sums, c.count)
	}
	if !final && fv.paused {
		return nil
	}
	nf := min(c.count, (len(b)+format.FrameSize-1)/format.FrameSize)
	for i := fv.next; i < nf; i++ {
		lo := i * format.FrameSize
		if !final && lo+format.FrameSize > len(b) {
			return nil // not all here yet
		}
		if i > 0 && lo+format.FrameHeader >= len(b) {
			break
		}
		frame := b[lo:min(len(b), lo+format.FrameSize)]
		if len(frame) < format.FrameHeader {
			return fmt.Errorf("%w: chunk frame truncated: %d bytes", format.ErrCorrupt, len(frame))
		}
		n := binary.LittleEndian.Uint32(frame)
		if n == 0 || n > format.ChunkSize || int(n) > len(frame)-format.FrameHeader {
			if !final {
				fv.paused = true
				return nil
			}
			if i == 0 {
				return fmt.Errorf("%w: chunk frame length %d invalid (have %d bytes)", format.ErrCorrupt, n, len(frame)-format.FrameHeader)
			}
			break
		}
		data := frame[format.FrameHeader : format.FrameHeader+int(n)]
		cache.SubBlockSums(data, &c.sums[i])
		if cache.CombineSums(&c.sums[i], len(data)) != binary.LittleEndian.Uint32(frame[4:]) {
			if !final {
				fv.paused = true
				return nil
			}
			if i == 0 {
				return fmt.Errorf("%w: chunk checksum mismatch", format.ErrCorrupt)
			}
			break
		}
		c.frames = append(c.frames, data)
		fv.next = i + 1
	}
	if !final {
		return nil
	}
	c.sums = c.sums[:nf]
	if len(c.frames) == 0 {
		return fmt.Errorf("%w: chunk frame truncated: %d bytes", format.ErrCorrupt, len(b))
	}
	return nil
}
