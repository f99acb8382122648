package volume

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

// CompactOptions choose which records the writer rewrites.
type CompactOptions struct {
	// MaxLive: records whose live bytes are at most this fraction of their
	// data are rewritten. Default 0.5.
	MaxLive float64
	// MaxBytes bounds the live bytes rewritten in one run. Default 256 MiB.
	MaxBytes int64
}

// CompactStats say what a compaction did.
type CompactStats struct {
	Records      int   `json:"records"`       // sparse records rewritten
	LiveBytes    int64 `json:"live_bytes"`    // bytes copied into new records
	DeadBytes    int64 `json:"dead_bytes"`    // bytes those records held that nothing reads
	SkippedBytes int64 `json:"skipped_bytes"` // live bytes overwritten while compacting
}

type recordUse struct {
	seq  uint64
	live int64
	data int64 // highest data offset referenced + 1: a lower bound of its data length
}

// Compact rewrites this volume's sparsely-live records: their live extents
// are copied into new records (through the normal write path, so ordering
// and durability are as for any write), after which nothing references the
// old records and GC can delete them once they leave the retention window.
// Writes racing with compaction win: a piece overwritten meanwhile is not
// copied.
func (v *Volume) Compact(ctx context.Context, o CompactOptions) (CompactStats, error) {
	var st CompactStats
	if v.w == nil {
		return st, blockdev.ErrReadOnly
	}
	if o.MaxLive <= 0 {
		o.MaxLive = 0.5
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 256 << 20
	}
	// Plan: live bytes per durable record of our own log.
	v.mu.Lock()
	if err := v.usableLocked(); err != nil {
		v.mu.Unlock()
		return st, err
	}
	use := map[uint64]*recordUse{}
	for e := range v.m.All() {
		if e.Loc.Vol != 0 || v.pending[e.Loc.Seq] != nil {
			continue
		}
		u := use[e.Loc.Seq]
		if u == nil {
			u = &recordUse{seq: e.Loc.Seq}
			use[e.Loc.Seq] = u
		}
		u.live += int64(e.Len)
	}
	v.mu.Unlock()
	sizes, err := v.recordDataLens(ctx)
	if err != nil {
		return st, err
	}
	var cands []*recordUse
	for seq, u := range use {
		n, ok := sizes[seq]
		if !ok || n == 0 {
			continue
		}
		u.data = n
		if float64(u.live) <= o.MaxLive*float64(n) {
			cands = append(cands, u)
		}
	}
	// Sparsest first.
	sort.Slice(cands, func(i, j int) bool {
		return float64(cands[i].live)/float64(cands[i].data) < float64(cands[j].live)/float64(cands[j].data)
	})
	for _, u := range cands {
		if st.LiveBytes >= o.MaxBytes {
			break
		}
		copied, skipped, err := v.compactRecord(ctx, u.seq)
		if err != nil {
			return st, fmt.Errorf("compact record %d: %w", u.seq, err)
		}
		st.Records++
		st.LiveBytes += copied
		st.SkippedBytes += skipped
		st.DeadBytes += u.data - u.live
	}
	if st.Records > 0 {
		if err := v.Flush(ctx); err != nil {
			return st, err
		}
		v.log.Info("compacted", "records", st.Records, "live_bytes", st.LiveBytes, "dead_bytes", st.DeadBytes)
	}
	return st, nil
}

// compactLoop compacts every interval until the volume closes.
func (v *Volume) compactLoop(every time.Duration) {
	v.tick(every, func() {
		if _, err := v.Compact(v.ctx, CompactOptions{}); err != nil && v.ctx.Err() == nil {
			v.log.Warn("background compaction failed", "err", err)
		}
	})
}

// tick is the loop of a background goroutine of the volume (counted in
// v.wg by its starter): fn every interval on the volume's clock, until the
// volume closes. The wait never overlaps fn, so a slow fn delays the next
// run rather than stacking runs up.
func (v *Volume) tick(every time.Duration, fn func()) {
	defer v.wg.Done()
	t := v.opts.Clock.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C():
		}
		fn()
	}
}

// recordDataLens returns the logical data length of each of this volume's
// records, from the object sizes (an upper bound including the trailer is
// fine for choosing candidates; frames make it slightly larger).
func (v *Volume) recordDataLens(ctx context.Context) (map[uint64]int64, error) {
	_, sizes, err := v.pool.listSeqs(ctx, format.LogPrefix(v.desc.ID))
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]int64, len(sizes))
	for s, n := range sizes {
		if ft, ok := v.pool.frames.get(v.desc.ID, s); ok {
			// Packed: the object size says little about the data; every
			// frame but the last holds a full chunk.
			out[s] = int64(ft.Frames()) * format.ChunkSize
			continue
		}
		out[s] = logicalBytes(n, v.key != nil)
	}
	return out, nil
}

// logicalBytes estimates the logical data in a record object of n bytes
// (frames of the volume's kind: sealed or not): n less the frames'
// headers (and tags); the trailer is counted.
func logicalBytes(n int64, sealed bool) int64 {
	stride, overhead := int64(format.FrameSize), int64(format.FrameHeader)
	if sealed {
		stride, overhead = format.SealedFrameSize, format.SealedFrameHeader+format.TagSize
	}
	frames := (n + stride - 1) / stride
	return max(0, n-frames*overhead)
}

// compactRecord copies the live pieces of record seq into the open segment.
func (v *Volume) compactRecord(ctx context.Context, seq uint64) (copied, skipped int64, err error) {
	v.mu.Lock()
	var pieces []extmap.Extent
	for e := range v.m.All() {
		if e.Loc.Vol == 0 && e.Loc.Seq == seq {
			pieces = append(pieces, e)
		}
	}
	v.mu.Unlock()
	for _, e := range pieces {
		buf := make([]byte, e.Len)
		if err := v.readPiece(ctx, piece{dst: buf, vol: v.desc.ID, seq: seq, off: e.Loc.Off}, 1, nil); err != nil {
			return copied, skipped, err
		}
		c, s, err := v.rewrite(ctx, e, buf)
		copied += c
		skipped += s
		if err != nil {
			return copied, skipped, err
		}
	}
	return copied, skipped, nil
}

// rewrite writes buf (the bytes of extent e as read) into the open segment,
// but only for the sub-ranges the map still points at e's record and
// offsets: anything written meanwhile is newer and stays.
func (v *Volume) rewrite(ctx context.Context, e extmap.Extent, buf []byte) (copied, skipped int64, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.reserveLocked(ctx, int64(len(buf))); err != nil {
		return 0, 0, err
	}
	var still []extmap.Extent
	v.m.Lookup(e.Start, e.Len, func(x extmap.Extent) bool {
		if x.Loc.Vol == 0 && x.Loc.Seq == e.Loc.Seq && x.Loc.Off-e.Loc.Off == x.Start-e.Start {
			still = append(still, x)
		}
		return true
	})
	for _, x := range still {
		seg, err := v.openLocked(int(x.Len))
		if err != nil {
			return copied, skipped, err
		}
		p := buf[x.Start-e.Start : x.End()-e.Start]
		d := seg.appendData(p)
		seg.exts = append(seg.exts, format.Extent{Off: x.Start, Len: x.Len, DataOff: d})
		seg.bytes += int64(x.Len)
		v.buffered += int64(x.Len)
		v.m.Set(x.Start, x.Len, extmap.Loc{Vol: 0, Seq: seg.seq, Off: d})
		copied += int64(x.Len)
		if seg.b.DataLen() >= uint64(v.opts.SegmentBytes) || len(seg.exts) >= maxSegmentExtents {
			v.sealLocked()
		}
	}
	return copied, int64(len(buf)) - copied, nil
}
