package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

type extmapExtent = extmap.Extent

// piece is a part of a read served from a record in the object store.
type piece struct {
	dst []byte
	vol string
	seq uint64
	off uint64
}

// ReadAt implements blockdev.Device.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.checkRange(off, len(p)); err != nil {
		return err
	}
	clear(p)
	var buf [8]piece
	pieces := buf[:0]
	v.mu.Lock()
	if err := v.usableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	v.m.Lookup(uint64(off), uint64(len(p)), func(e extmap.Extent) bool {
		dst := p[e.Start-uint64(off) : e.End()-uint64(off)]
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
	ahead := 1
	if v.lastReadEnd.Swap(off+int64(len(p))) == off {
		ahead = v.opts.Readahead
	}
	for _, pc := range pieces {
		if err := v.readPiece(ctx, pc, ahead); err != nil {
			return fmt.Errorf("read %s at %d: %w", v.desc.Name, off, err)
		}
	}
	return nil
}

// readPiece fills pc.dst from the cache or the record's chunks.
func (v *Volume) readPiece(ctx context.Context, pc piece, ahead int) error {
	dst, off := pc.dst, pc.off
	for len(dst) > 0 {
		chunk := off / format.ChunkSize
		within := int(off % format.ChunkSize)
		n := min(len(dst), format.ChunkSize-within)
		key := cache.Key{Vol: pc.vol, Seq: pc.seq, Chunk: uint32(chunk)}
		hit := false
		if v.cache != nil {
			var err error
			if hit, err = v.cache.ReadAt(key, dst[:n], within); err != nil {
				hit = false
			}
		}
		if !hit {
			data, err := v.fetchChunk(ctx, key, ahead)
			if err != nil {
				return err
			}
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

type fetchCall struct {
	done chan struct{}
	data []byte
	err  error
}

// fetchChunk returns the verified data of one chunk, sharing one GET among
// concurrent misses of the same chunk. With ahead > 1 the same GET also
// fetches (and caches) the following chunks of the record.
func (v *Volume) fetchChunk(ctx context.Context, key cache.Key, ahead int) ([]byte, error) {
	v.fmu.Lock()
	if c := v.inflight[key]; c != nil {
		v.fmu.Unlock()
		select {
		case <-c.done:
			return c.data, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &fetchCall{done: make(chan struct{})}
	v.inflight[key] = c
	v.fmu.Unlock()

	c.data, c.err = v.fetchFrames(ctx, key, ahead)

	v.fmu.Lock()
	delete(v.inflight, key)
	v.fmu.Unlock()
	close(c.done)
	return c.data, c.err
}

// fetchFrames GETs frames key.Chunk .. key.Chunk+count-1 in one request,
// verifies them, caches them and returns the first one's data. Transient
// errors are retried; a checksum failure is retried once, then reported.
func (v *Volume) fetchFrames(ctx context.Context, key cache.Key, count int) ([]byte, error) {
	objKey := format.LogKey(key.Vol, key.Seq)
	if v.cache == nil {
		count = 1 // nowhere to keep what readahead would bring
	}
	buf := make([]byte, count*format.FrameSize)
	var lastErr error
	backoff := 20 * time.Millisecond
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff) {
			return nil, ctx.Err()
		}
		backoff *= 2
		n, err := v.pool.store.GetRange(ctx, objKey, format.FramePos(uint64(key.Chunk)), buf)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				return nil, err
			}
			continue
		}
		first, err := format.DecodeFrame(buf[:min(n, format.FrameSize)], -1)
		if err != nil {
			lastErr = fmt.Errorf("record %d of volume %s chunk %d: %w", key.Seq, key.Vol, key.Chunk, err)
			v.log.Error("corrupt chunk from object store; refetching", "seq", key.Seq, "chunk", key.Chunk, "err", err)
			if errors.Is(err, format.ErrCorrupt) && attempt >= 1 {
				return nil, lastErr
			}
			continue
		}
		if v.cache != nil {
			_ = v.cache.Put(key, first)
			for i := 1; i < count; i++ {
				lo := i * format.FrameSize
				if lo+format.FrameHeader >= n {
					break
				}
				data, err := format.DecodeFrame(buf[lo:min(n, lo+format.FrameSize)], -1)
				if err != nil {
					break // past the record's data section
				}
				k := key
				k.Chunk += uint32(i)
				_ = v.cache.Put(k, data)
			}
		}
		return first, nil
	}
	return nil, lastErr
}
