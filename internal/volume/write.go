package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// WriteAt implements blockdev.Device. All-zero data is stored as a zero
// extent (no bytes). Writes larger than a segment are split across records.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64) error {
	if v.w == nil {
		return blockdev.ErrReadOnly
	}
	if err := v.checkRange(off, len(p)); err != nil {
		return err
	}
	if isZero(p) {
		return v.writeZero(ctx, off, int64(len(p)))
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for len(p) > 0 {
		n := min(len(p), v.opts.SegmentBytes)
		if err := v.reserveLocked(ctx, int64(n)); err != nil {
			return err
		}
		seg, err := v.openLocked(n)
		if err != nil {
			return err
		}
		n = min(n, max(v.opts.SegmentBytes-int(seg.b.DataLen()), 1))
		d := seg.appendData(p[:n])
		seg.exts = append(seg.exts, format.Extent{Off: uint64(off), Len: uint64(n), DataOff: d})
		seg.bytes += int64(n)
		v.buffered += int64(n)
		v.m.Set(uint64(off), uint64(n), extmap.Loc{Vol: 0, Seq: seg.seq, Off: d})
		v.afterWriteLocked(seg)
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// WriteZeroes implements blockdev.Device.
func (v *Volume) WriteZeroes(ctx context.Context, off, length int64) error {
	if v.w == nil {
		return blockdev.ErrReadOnly
	}
	if length < 0 || length > v.Size() {
		return fmt.Errorf("%w: length %d", blockdev.ErrOutOfRange, length)
	}
	if err := v.checkRange(off, int(length)); err != nil {
		return err
	}
	return v.writeZero(ctx, off, length)
}

// Trim implements blockdev.Device; trimmed ranges read as zeros.
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	return v.WriteZeroes(ctx, off, length)
}

func (v *Volume) writeZero(ctx context.Context, off, length int64) error {
	if length == 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.reserveLocked(ctx, 0); err != nil {
		return err
	}
	seg, err := v.openLocked(0)
	if err != nil {
		return err
	}
	seg.exts = append(seg.exts, format.Extent{Off: uint64(off), Len: uint64(length), Zero: true})
	v.m.Clear(uint64(off), uint64(length))
	v.afterWriteLocked(seg)
	return nil
}

// reserveLocked waits until n more bytes fit in the write buffer.
func (v *Volume) reserveLocked(ctx context.Context, n int64) error {
	for {
		if err := v.usableLocked(); err != nil {
			return err
		}
		if v.buffered == 0 || v.buffered+n <= v.opts.BufferBytes {
			return nil
		}
		if v.open != nil {
			v.sealLocked() // let the buffered bytes drain
		}
		if err := v.waitLocked(ctx); err != nil {
			return err
		}
	}
}

// minSegmentBuffer is the smallest data buffer a segment starts with.
const minSegmentBuffer = format.ChunkSize

// openLocked returns the open segment, starting one (and its slot) if needed.
// n is the size of the write about to go in.
func (v *Volume) openLocked(n int) (*segment, error) {
	if v.open != nil {
		return v.open, nil
	}
	v.nextSeg++
	seq, err := v.w.Assign(v.nextSeg)
	if err != nil {
		return nil, blockdev.ErrFenced
	}
	// Size the buffer for what the previous segment held (a stream of writes
	// fills whole segments; a flush after every small write seals tiny
	// ones), so it rarely grows (each growth copies it) and a flush-heavy
	// workload does not allocate (and zero) megabytes per record.
	hint := min(max(n, int(v.lastSegData), minSegmentBuffer), v.opts.SegmentBytes)
	var b *format.Builder
	if k := len(v.spare); k > 0 {
		b, v.spare = v.spare[k-1], v.spare[:k-1]
	} else {
		b = format.NewBuilder(hint)
	}
	seg := &segment{id: v.nextSeg, seq: seq, b: b}
	v.open = seg
	v.segs[seg.id] = seg
	v.pending[seq] = seg
	return seg, nil
}

// appendStep is how many bytes appendData copies before it checksums
// them: small enough that they are still in the CPU's L1 cache.
const appendStep = 16 << 10

// appendData appends p to the segment's data and returns its offset in
// the data section, summing each sub-block it completes right after
// copying it. Summing at seal instead read every byte of the multi-MiB
// builder back from memory: ~12 % of serve's CPU on a sequential write.
func (seg *segment) appendData(p []byte) uint64 {
	off := seg.b.DataLen()
	for len(p) > 0 {
		k := min(len(p), appendStep)
		seg.b.Append(p[:k])
		p = p[k:]
		seg.sumTo(seg.b.DataLen() / cache.SubBlockSize * cache.SubBlockSize)
	}
	return off
}

// sumTo extends seg.sums over the data bytes up to end: whole sub-blocks
// while the segment is open, the partial last one only when it is sealed
// (end = DataLen), as no append may follow.
func (seg *segment) sumTo(end uint64) {
	for seg.summed < end {
		c := seg.summed / format.ChunkSize
		if c >= uint64(len(seg.sums)) {
			seg.sums = append(seg.sums, cache.Sums{})
		}
		chunk := seg.b.Chunk(c)
		stop := min(end-c*format.ChunkSize, uint64(len(chunk)))
		cache.SubBlockSumsRange(chunk, &seg.sums[c],
			int(seg.summed%format.ChunkSize/cache.SubBlockSize),
			int((stop+cache.SubBlockSize-1)/cache.SubBlockSize))
		seg.summed = c*format.ChunkSize + stop
	}
}

func (v *Volume) afterWriteLocked(seg *segment) {
	v.lastWrite = v.opts.Clock.Now()
	if seg.b.DataLen() >= uint64(v.opts.SegmentBytes) || len(seg.exts) >= maxSegmentExtents {
		v.sealLocked()
	}
}

// sealLocked turns the open segment into a record and starts its upload.
func (v *Volume) sealLocked() {
	seg := v.open
	v.open = nil
	if seg == nil {
		return
	}
	v.lastTime = max(v.opts.Clock.Now().UnixNano(), v.lastTime+1)
	rec := &format.Record{Type: format.RecordData, Seq: seg.seq, Epoch: v.w.Epoch(), Writer: v.w.ID(),
		Time: v.lastTime, Volume: v.desc.ID, Durable: v.w.Prefix(), Extents: seg.exts}
	b := seg.b
	if seg.restore != nil {
		rec.Type, rec.Extents, rec.RestoreVol, rec.RestoreSeq = seg.restore.Type, nil, seg.restore.RestoreVol, seg.restore.RestoreSeq
		rec.NewSize = seg.restore.NewSize
		b = nil
	}
	obj, err := sealSummed(seg, rec, b, v.key, v.nonces, v.packer)
	if err != nil {
		v.failLocked(fmt.Errorf("seal record %d: %w", seg.seq, err))
		return
	}
	v.pool.frames.note(v.desc.ID, rec)
	seg.rec, seg.obj = rec, obj
	v.lastSealed = seg.id
	v.lastSegData = rec.DataLen
	v.sinceSnap++
	if v.sinceSnap >= v.opts.SnapshotEvery && v.snapCand == nil {
		v.sinceSnap = 0
		v.snapCand = &snapCandidate{seg: seg.id, seq: seg.seq, m: v.m.Clone(), vols: append([]string(nil), v.vols...), time: rec.Time, moves: v.moves, size: uint64(v.Size())}
	}
	v.startUpload(seg.seq, obj, objectSum(seg, obj))
}

// Flush implements blockdev.Device: it returns once every write completed
// before the call is inside records that exist in the object store. It
// logs a WARN if that takes longer than Options.StallWarn, and gives up
// with ErrFlushTimeout after Options.FlushTimeout (if set), leaving the
// writes queued.
func (v *Volume) Flush(ctx context.Context) error {
	if v.w == nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usableLocked(); err != nil {
		return err
	}
	if v.open != nil {
		v.sealLocked()
	}
	target := v.lastSealed
	if v.durableDone >= target {
		return nil
	}
	start := v.opts.Clock.Now()
	warn := time.NewTimer(v.opts.StallWarn)
	defer warn.Stop()
	var timeout <-chan time.Time
	if v.opts.FlushTimeout > 0 {
		t := time.NewTimer(v.opts.FlushTimeout)
		defer t.Stop()
		timeout = t.C
	}
	stalled := false // logged as stalled: log its end too
	for v.durableDone < target {
		if v.fenced {
			return blockdev.ErrFenced
		}
		if v.fatal != nil {
			return v.fatal
		}
		ch := v.progress
		v.mu.Unlock()
		var err error
		warnNow := false
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		case <-warn.C:
			warnNow = true
		case <-timeout:
			err = ErrFlushTimeout
		}
		v.mu.Lock()
		waited := v.opts.Clock.Now().Sub(start).Round(time.Millisecond)
		switch {
		case errors.Is(err, ErrFlushTimeout):
			v.flushTimeouts.Add(1)
			return v.flushWaitErrLocked(waited, err)
		case err != nil:
			return v.flushWaitErrLocked(waited, err)
		case warnNow && v.durableDone < target:
			stalled = true
			v.log.Warn("flush stalled: waiting for the object store", "waited", waited,
				"waiting_for", v.describeWaitLocked(), "flush_timeout", v.opts.FlushTimeout)
		}
	}
	if stalled {
		v.log.Info("stalled flush finished", "took", v.opts.Clock.Now().Sub(start).Round(time.Millisecond))
	}
	return nil
}

// flushWaitErrLocked is the error of a Flush that gave up (cause: its
// context's error or ErrFlushTimeout) after waiting for the uploads: it
// names the oldest one, the record every later one waits behind in the
// sequence order, and wraps that upload's last store error too, so the
// caller learns why the pipeline is stuck (errors.Is/As reach both).
func (v *Volume) flushWaitErrLocked(waited time.Duration, cause error) error {
	if o := v.oldestUploadLocked(); o != nil && o.lastErr != nil {
		return fmt.Errorf("flush %s: waited %s for %s: %w; last error: %w", v.desc.Name, waited, v.describeWaitLocked(), cause, o.lastErr)
	}
	return fmt.Errorf("flush %s: waited %s for %s: %w", v.desc.Name, waited, v.describeWaitLocked(), cause)
}

// describeWaitLocked names what a flush is waiting for: the oldest upload.
func (v *Volume) describeWaitLocked() string {
	o := v.oldestUploadLocked()
	if o == nil {
		return fmt.Sprintf("%d records", len(v.uploads))
	}
	return fmt.Sprintf("%d record uploads (oldest: %s %s, %d attempts)", len(v.uploads), o.op, o.key, o.attempts)
}

// idleSeal seals the open segment once writes have paused for IdleFlush,
// and lets go of the spare builders a write stream kept beyond
// idleSpareBuilders; it runs every IdleFlush/4 on the volume's clock (see
// tick).
func (v *Volume) idleSeal() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.opts.Clock.Now().Sub(v.lastWrite) < v.opts.IdleFlush {
		return
	}
	if v.open != nil {
		v.sealLocked()
	}
	if len(v.spare) > idleSpareBuilders {
		clear(v.spare[idleSpareBuilders:])
		v.spare = v.spare[:idleSpareBuilders]
	}
}
