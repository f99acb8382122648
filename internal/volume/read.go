package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
	ahead := 1
	if v.lastReadEnd.Swap(off+int64(len(p))) == off {
		ahead = v.opts.Readahead
	}
	for _, pc := range pieces {
		if pc.zero {
			clear(pc.dst)
			continue
		}
		if err := v.readPiece(ctx, pc, ahead); err != nil {
			return fmt.Errorf("read %s at %d: %w", v.desc.Name, off, err)
		}
	}
	return nil
}

// readPiece fills pc.dst from the cache or the record's chunks. A miss
// fetches, in one GET, every chunk the rest of the piece needs (at least
// ahead when there is a cache to keep the extra ones), and the piece's
// later chunks are then copied from that fetch rather than read back from
// the cache.
func (v *Volume) readPiece(ctx context.Context, pc piece, ahead int) error {
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
		if fc != nil && chunk-fcFirst < uint64(len(fc.frames)) {
			data = fc.frames[chunk-fcFirst]
		} else {
			key := cache.Key{Vol: pc.vol, Seq: pc.seq, Chunk: uint32(chunk)}
			hit := false
			if v.cache != nil {
				var err error
				if hit, err = v.cache.ReadAt(key, dst[:n], within); err != nil {
					hit = false
				}
			}
			if !hit {
				count := (within + len(dst) + format.ChunkSize - 1) / format.ChunkSize
				if v.cache != nil {
					count = max(count, ahead)
				}
				c, err := v.fetchChunk(ctx, key, count)
				if err != nil {
					return err
				}
				if fc != nil {
					fc.release()
				}
				fc, fcFirst = c, chunk
				data = c.frames[0]
			}
		}
		if data != nil {
			if len(data) < within+n {
				return fmt.Errorf("record %d of volume %s chunk %d: %w: %d bytes, need %d", pc.seq, pc.vol, chunk, format.ErrCorrupt, len(data), within+n)
			}
			copy(dst[:n], data[within:within+n])
		}
		dst = dst[n:]
		off += uint64(n)
	}
	return nil
}

// fetchCall is one GET of consecutive chunks, shared by the concurrent
// misses of its first chunk. frames[i] is the verified data of chunk
// first+i; frames[0] is always there on success. The frames live in a pooled
// buffer: everyone fetchChunk returned the call to must release it once done
// with the frames, and the last release recycles the buffer.
type fetchCall struct {
	done   chan struct{}
	frames [][]byte
	err    error
	buf    *[]byte // pooled buffer behind frames, nil if not pooled
	refs   atomic.Int32
}

func (c *fetchCall) release() {
	if c.refs.Add(-1) == 0 && c.buf != nil {
		fetchBufs.Put(c.buf)
		c.buf, c.frames = nil, nil
	}
}

// fetchBufSize fits a default readahead (16 chunks) or a 1 MiB read.
const fetchBufSize = 16 * format.FrameSize

var fetchBufs = sync.Pool{New: func() any { b := make([]byte, fetchBufSize); return &b }}

// fetchChunk fetches (at least) chunk key.Chunk and up to count-1 following
// chunks of the record in one GET, sharing it with concurrent misses of the
// same chunk. On success the caller must release the returned call.
func (v *Volume) fetchChunk(ctx context.Context, key cache.Key, count int) (*fetchCall, error) {
	v.fmu.Lock()
	if c := v.inflight[key]; c != nil {
		c.refs.Add(1)
		v.fmu.Unlock()
		select {
		case <-c.done:
			if c.err != nil {
				c.release()
				return nil, c.err
			}
			return c, nil
		case <-ctx.Done():
			c.release()
			return nil, ctx.Err()
		}
	}
	c := &fetchCall{done: make(chan struct{})}
	c.refs.Store(1)
	v.inflight[key] = c
	v.fmu.Unlock()

	c.frames, c.buf, c.err = v.fetchFrames(ctx, key, count)

	v.fmu.Lock()
	delete(v.inflight, key)
	v.fmu.Unlock()
	close(c.done)
	if c.err != nil {
		c.release()
		return nil, c.err
	}
	return c, nil
}

// summedPutter is implemented by caches that take precomputed sub-block
// sums (cache.Cache), so a fetched chunk's bytes are checksummed only once.
type summedPutter interface {
	PutSummed(key cache.Key, data []byte, sums *cache.Sums) error
}

// fetchFrames GETs frames key.Chunk .. key.Chunk+count-1 in one request,
// verifies them, caches them and returns their data (at least the first
// frame's; the list stops before the first frame that does not verify,
// which past the record's data section is the trailer). Transient errors
// are retried; a checksum failure of the first frame is retried once, then
// reported. The frames point into the returned pooled buffer (nil if the
// buffer was allocated for this call).
func (v *Volume) fetchFrames(ctx context.Context, key cache.Key, count int) ([][]byte, *[]byte, error) {
	objKey := format.LogKey(key.Vol, key.Seq)
	size := count * format.FrameSize
	var bp *[]byte
	var buf []byte
	if size <= fetchBufSize {
		bp = fetchBufs.Get().(*[]byte)
		buf = (*bp)[:size]
	} else {
		buf = make([]byte, size)
	}
	fail := func(err error) ([][]byte, *[]byte, error) {
		if bp != nil {
			fetchBufs.Put(bp)
		}
		return nil, nil, err
	}
	var lastErr error
	backoff := 20 * time.Millisecond
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff) {
			return fail(ctx.Err())
		}
		backoff *= 2
		n, err := v.pool.store.GetRange(ctx, objKey, format.FramePos(uint64(key.Chunk)), buf)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				return fail(err)
			}
			continue
		}
		frames, err := v.verifyFrames(key, buf[:n], count)
		if err != nil {
			lastErr = fmt.Errorf("record %d of volume %s chunk %d: %w", key.Seq, key.Vol, key.Chunk, err)
			v.log.Error("corrupt chunk from object store; refetching", "seq", key.Seq, "chunk", key.Chunk, "err", err)
			if errors.Is(err, format.ErrCorrupt) && attempt >= 1 {
				return fail(lastErr)
			}
			continue
		}
		return frames, bp, nil
	}
	return fail(lastErr)
}

// verifyFrames checks the frames in b (fetched from chunk key.Chunk's frame
// position) and puts them in the cache. Each frame's CRC-32C is derived from
// its per-4 KiB sums, which the cache keeps, so the bytes are read once. An
// error means the first frame is bad; later bad frames end the list.
func (v *Volume) verifyFrames(key cache.Key, b []byte, count int) ([][]byte, error) {
	frames := make([][]byte, 0, count)
	sp, summed := v.cache.(summedPutter)
	for i := 0; i < count; i++ {
		lo := i * format.FrameSize
		if i > 0 && lo+format.FrameHeader >= len(b) {
			break
		}
		frame := b[lo:min(len(b), lo+format.FrameSize)]
		if len(frame) < format.FrameHeader {
			return nil, fmt.Errorf("%w: chunk frame truncated: %d bytes", format.ErrCorrupt, len(frame))
		}
		n := binary.LittleEndian.Uint32(frame)
		if n == 0 || n > format.ChunkSize || int(n) > len(frame)-format.FrameHeader {
			if i == 0 {
				return nil, fmt.Errorf("%w: chunk frame length %d invalid (have %d bytes)", format.ErrCorrupt, n, len(frame)-format.FrameHeader)
			}
			break
		}
		data := frame[format.FrameHeader : format.FrameHeader+int(n)]
		var sums cache.Sums
		cache.SubBlockSums(data, &sums)
		if cache.CombineSums(&sums, len(data)) != binary.LittleEndian.Uint32(frame[4:]) {
			if i == 0 {
				return nil, fmt.Errorf("%w: chunk checksum mismatch", format.ErrCorrupt)
			}
			break
		}
		frames = append(frames, data)
		if v.cache != nil {
			k := key
			k.Chunk += uint32(i)
			if summed {
				_ = sp.PutSummed(k, data, &sums)
			} else {
				_ = v.cache.Put(k, data)
			}
		}
	}
	return frames, nil
}
