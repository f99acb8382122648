package volume

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/objstore"
)

// startUpload creates record seq (if absent) in the background, retrying
// transient errors until the slot is resolved or the volume is abandoned.
// sum is obj's CRC-32C. Called with mu held.
//
// Uploads take the Options.Uploads slots in the order they were started
// (sealed): each waits until its predecessor holds a slot before it
// competes for one, so a later record never overtakes an earlier one at
// the semaphore and the durable prefix, which every FLUSH waits on,
// advances in sequence.
func (v *Volume) startUpload(seq uint64, obj []byte, sum uint32) {
	u := v.trackUploadLocked(seq, format.LogKey(v.desc.ID, seq))
	prev, turn := v.uploadTurn, make(chan struct{})
	v.uploadTurn = turn
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		slot := false
		if prev != nil {
			select {
			case <-prev: // closed once the predecessor holds a slot
			case <-v.ctx.Done():
			}
		}
		if v.ctx.Err() == nil {
			select {
			case v.upSem <- struct{}{}:
				slot = true
			case <-v.ctx.Done():
			}
		}
		close(turn)
		if !slot {
			v.uploadDone(u)
			return
		}
		v.uploadStarted(u)
		mine := v.upload(u, obj, sum)
		v.uploadDone(u)
		<-v.upSem // free the upload slot before the local cache copy
		if mine {
			v.cacheRecord(seq, obj, u.attempts == 1)
		}
	}()
}

// upload creates the record and reports the outcome to the journal. It
// returns true if the slot now holds this object (to be cached).
//
// Every request has its own deadline (Options.StoreTimeout): a create that
// timed out may still have landed, and its retry then finds the slot taken
// and reads it, and the journal judges it ours by the writer id, as after
// any lost response.
func (v *Volume) upload(u *upload, obj []byte, sum uint32) bool {
	seq, key := u.seq, u.key
	backoff := 25 * time.Millisecond
	sp, summed := v.pool.store.(objstore.SummedPutter)
	for attempt := 1; ; attempt++ {
		err := v.storeRequest(u, "put-if-absent", len(obj), func(ctx context.Context) error {
			if summed {
				return sp.PutIfAbsentSummed(ctx, key, obj, sum)
			}
			return v.pool.store.PutIfAbsent(ctx, key, obj)
		})
		if err == nil {
			v.landed(seq) // acknowledge first; caching is off the flush path
			return true
		}
		if errors.Is(err, objstore.ErrExists) {
			var r *format.Record
			err = v.storeRequest(u, "get (judge the taken slot)", len(obj), func(ctx context.Context) error {
				var rerr error
				r, rerr = v.pool.readRecordAt(ctx, v.desc.ID, seq)
				return rerr
			})
			if err == nil {
				return v.taken(seq, r)
			}
			if errors.Is(err, format.ErrCorrupt) {
				v.mu.Lock()
				v.failLocked(fmt.Errorf("record %d in our slot is corrupt: %w", seq, err))
				v.mu.Unlock()
				return false
			}
		}
		if v.ctx.Err() != nil {
			return false
		}
		v.uploadRetries.Add(1)
		if attempt == 1 || attempt%10 == 0 {
			v.log.Warn("record upload failed; retrying", "seq", seq, "attempt", attempt, "err", err)
		}
		jitter := time.Duration(rand.Int64N(int64(backoff)/2 + 1))
		if !sleepCtx(v.ctx, backoff+jitter) {
			return false
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// cacheRecord puts a landed record's chunks into the host cache, so the
// writer reads its own data warm, and then lets the segment retire (until
// then reads are served from its memory). first: obj landed on the first
// request (no timed-out request of it can still be reading it).
//
// Records that land while others wait for an upload slot are not cached:
// the store is the bottleneck of a bulk write stream, and copying every
// byte of it into the cache (a fifth of such a stream's CPU) would only
// slow the writer and evict what was cached before. The last records of
// the stream land as that backlog drains and are cached: the recent tail
// a writer reads back stays warm, and so do all records of writes that do
// not outrun the store.
func (v *Volume) cacheRecord(seq uint64, obj []byte, first bool) {
	if v.cache != nil {
		v.mu.Lock()
		seg := v.pending[seq]
		backlog := len(v.uploads) >= v.opts.Uploads
		v.mu.Unlock()
		if backlog {
			v.fillsSkipped.Add(1)
		} else if seg != nil && seg.rec != nil {
			// Our own bytes: no need to re-verify the frames we just built,
			// nor to checksum them again (their sums were taken at seal).
			sp, summed := v.cache.(summedPutter)
			for i := uint64(0); i*format.ChunkSize < seg.rec.DataLen; i++ {
				k := cache.Key{Vol: v.desc.ID, Seq: seq, Chunk: uint32(i)}
				var err error
				if summed && int(i) < len(seg.sums) {
					err = sp.PutSummed(k, seg.b.Chunk(i), &seg.sums[i])
				} else {
					err = v.cache.Put(k, seg.b.Chunk(i))
				}
				if err != nil {
					v.log.Debug("cache put failed", "err", err)
					break
				}
			}
		}
	}
	v.mu.Lock()
	if seg := v.pending[seq]; seg != nil {
		seg.cached = true
		seg.reuse = first && !seg.moved && seg.restore == nil && len(seg.obj) > 0 && len(obj) > 0 && &seg.obj[0] == &obj[0]
		v.progressLocked()
	}
	v.mu.Unlock()
}

func (v *Volume) landed(seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.w.Landed(seq)
	v.progressLocked()
}

// taken handles a slot found occupied by r.
// It returns true if the record is our own (a lost response), to be cached.
func (v *Volume) taken(seq uint64, r *format.Record) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	moves, j := v.w.Taken(seq, r)
	switch j {
	case journal.Fenced:
		v.fenceLocked(seq, r)
		return false
	case journal.Mine:
		v.progressLocked()
		return true
	case journal.Skip:
		v.log.Warn("slot held a fenced writer's leftover; moving pending records", "slot", seq, "moves", len(moves))
		v.applyMovesLocked(moves)
	}
	v.progressLocked()
	return false
}

// applyMovesLocked rewrites segments at their new slots.
func (v *Volume) applyMovesLocked(moves []journal.Move) {
	if len(moves) == 0 {
		return
	}
	v.moves++
	v.snapCand = nil
	// A filler record takes the time of the oldest sealed segment moved
	// (it lands at a later slot), so record times stay in slot order.
	fillTime := v.opts.Clock.Now().UnixNano()
	for _, mv := range moves {
		if seg := v.segs[mv.Seg]; seg != nil && seg.rec != nil {
			fillTime = min(fillTime, seg.rec.Time)
		}
	}
	for _, mv := range moves {
		seg := v.segs[mv.Seg]
		if seg == nil {
			continue
		}
		if v.pending[mv.From] == seg {
			delete(v.pending, mv.From)
		}
		seg.seq = mv.To
		seg.moved = true
		v.pending[mv.To] = seg
		for _, x := range seg.exts {
			if !x.Zero {
				v.m.Relocate(x.Off, x.Len, 0, mv.From, mv.To)
			}
		}
		if seg.obj == nil {
			// Still open: it will be sealed at its new slot. Nothing was
			// ever uploaded to its old one, which the journal now holds
			// as lost until an outcome is reported there: fill it with an
			// empty record of ours, or the log would keep a gap there and
			// nothing after it could become durable (Flush would hang).
			v.fillSlotLocked(mv.From, fillTime)
			continue
		}
		rec := *seg.rec
		rec.Seq = mv.To
		var obj []byte
		var err error
		if (seg.rec.Sealed || seg.rec.Frames != nil) && seg.rec.DataLen > 0 {
			// Sealed frames name their seq in their additional data: seal
			// the (still buffered) plaintext again for the new slot, with
			// fresh nonces. Packed frames are packed again (Reseal knows
			// only fixed-stride frames).
			obj, err = sealSummed(seg, &rec, seg.b, v.key, v.nonces, v.packer)
			v.pool.frames.forget(v.desc.ID, mv.From)
			v.pool.frames.note(v.desc.ID, &rec)
		} else {
			obj, err = format.Reseal(seg.obj, seg.rec.DataLen, &rec)
		}
		if err != nil {
			v.failLocked(err)
			return
		}
		seg.rec, seg.obj = &rec, obj
		v.startUpload(mv.To, obj, objectSum(seg, obj))
	}
}

// fillSlotLocked creates an empty data record of ours at slot seq (replay
// applies nothing from it), to resolve a slot no segment will be written to.
func (v *Volume) fillSlotLocked(seq uint64, t int64) {
	rec := &format.Record{Type: format.RecordData, Seq: seq, Epoch: v.w.Epoch(), Writer: v.w.ID(), Time: t, Volume: v.desc.ID, Durable: v.w.Prefix()}
	obj, err := format.EncodeRecord(rec, nil)
	if err != nil {
		v.failLocked(fmt.Errorf("fill slot %d: %w", seq, err))
		return
	}
	v.startUpload(seq, obj, format.Checksum(obj))
}

// sealSummed encodes seg's record (b: its data, nil for none) with one
// CRC-32C pass over the data: each chunk's sub-block sums, kept in seg.sums
// for the cache fill, are combined into the chunk's frame checksum, and
// the frames' into seg.dataSum, the CRC-32C of the whole data section, from
// which objectSum derives the upload's checksum. Seal would otherwise read
// every byte for the frames, the cache for its sums and the S3 upload for
// its checksum header: three passes, a quarter of a sequential writer's CPU.
//
// With key (an encrypted volume) the frames are sealed into a new buffer
// (the builder keeps the plaintext the cache fill and a reseal need) and
// the data section's CRC-32C is taken over the ciphertext. With a packer
// (a compressed volume) the record is packed the same way, compressed
// before it is sealed.
func sealSummed(seg *segment, rec *format.Record, b *format.Builder, key *format.DataKey, nonces *format.Nonces, packer *format.Packer) ([]byte, error) {
	seg.dataSum = 0
	if b == nil {
		return format.EncodeRecord(rec, nil)
	}
	n := b.DataLen()
	seg.sumTo(n)
	sums := seg.sums
	chunks := uint64(len(sums))
	frame := make([]uint32, chunks)
	for i := range chunks {
		frame[i] = cache.CombineSums(&sums[i], format.ChunkLen(n, i))
	}
	if key != nil || packer != nil {
		var obj []byte
		var err error
		if packer != nil {
			obj, err = packer.Pack(b, rec, key, nonces)
		} else {
			obj, err = b.SealEncrypted(rec, key, nonces)
		}
		if err != nil {
			return nil, err
		}
		seg.dataSum = format.Checksum(obj[:rec.DataSectionBytes()])
		return obj, nil
	}
	obj, err := b.SealSummed(rec, func(i uint64) uint32 { return frame[i] })
	if err != nil {
		return nil, err
	}
	var crc uint32 // of the empty prefix
	for i := range chunks {
		pos := format.FramePos(i)
		crc = cache.Combine(crc, format.Checksum(obj[pos:pos+format.FrameHeader]), format.FrameHeader)
		crc = cache.Combine(crc, frame[i], format.ChunkLen(n, i))
	}
	seg.dataSum = crc
	return obj, nil
}

// objectSum returns the CRC-32C of obj, seg's record as sealed by
// sealSummed (or resealed at another slot: same data section, another
// trailer), reading only its trailer.
func objectSum(seg *segment, obj []byte) uint32 {
	data := seg.rec.DataSectionBytes()
	return cache.Combine(seg.dataSum, format.Checksum(obj[data:]), len(obj)-int(data))
}

// idleSpareBuilders bounds Volume.spare once writes pause (idleSeal): few
// enough that an idle volume keeps little (each holds up to a segment's
// data, 4 MiB by default).
const idleSpareBuilders = 2

// maxBuildersLocked bounds the builders the volume holds, spares included,
// while it is written: as many as a full write buffer holds (its segments,
// the open one and one being sealed), so keeping spares never raises the
// memory a full buffer takes. Spares up to that bound matter: uploads land
// in bursts (Options.Uploads in flight), and a stream that kept only two
// of a burst's retired builders allocated (and zeroed) a new multi-MiB
// buffer for about every third record, with the garbage collection that
// goes with it.
func (v *Volume) maxBuildersLocked() int {
	return max(int(v.opts.BufferBytes/int64(v.opts.SegmentBytes))+2, idleSpareBuilders)
}

// progressLocked retires durable segments and wakes waiters.
func (v *Volume) progressLocked() {
	d := v.w.DurableSeg()
	if d > v.durableDone {
		v.durableDone = d
	}
	for id, seg := range v.segs {
		if id <= v.durableDone && seg.cached {
			delete(v.segs, id)
			if v.pending[seg.seq] == seg {
				delete(v.pending, seg.seq)
			}
			v.buffered -= seg.bytes
			if seg.reuse && len(v.segs)+len(v.spare) < v.maxBuildersLocked() {
				seg.b.Reset()
				v.spare = append(v.spare, seg.b)
			}
		}
	}
	if c := v.snapCand; c != nil && d >= c.seg && !v.fenced {
		v.snapCand = nil
		if c.moves == v.moves {
			v.startSnapshot(c)
		} else {
			v.sinceSnap = v.opts.SnapshotEvery // retake at the next seal
		}
	}
	v.broadcastLocked()
}

// startSnapshot writes candidate c as snap/<c.seq> in the background.
func (v *Volume) startSnapshot(c *snapCandidate) {
	v.lastSnap = max(v.lastSnap, c.seq)
	h := v.snapHeader(c)
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		if err := v.pool.writeSnapshot(v.ctx, h, c.m); err != nil {
			v.log.Warn("snapshot write failed", "seq", c.seq, "err", err)
		}
	}()
}

func (v *Volume) snapHeader(c *snapCandidate) *format.SnapshotHeader {
	return &format.SnapshotHeader{Volume: v.desc.ID, Seq: c.seq, Epoch: v.w.Epoch(), Writer: v.w.ID(), FenceSeq: v.st.Seq, Time: c.time, Size: c.size, Vols: c.vols}
}

// writeSnapshot stores map m as the snapshot h describes. Snapshots are a
// function of the log prefix, so an existing one at the same seq is equal.
func (p *Pool) writeSnapshot(ctx context.Context, h *format.SnapshotHeader, m *extmap.Map) error {
	b := format.AppendSnapshotFrames(nil, h, snapExtents(m.All()), p.frames.forSnapshot(m, h.Vols, 0))
	err := p.store.PutIfAbsent(ctx, format.SnapKey(h.Volume, h.Seq), b)
	if err != nil && !errors.Is(err, objstore.ErrExists) {
		return fmt.Errorf("write snapshot %d of volume %s: %w", h.Seq, h.Volume, err)
	}
	return nil
}

func snapExtents(all iter.Seq[extmapExtent]) iter.Seq[format.SnapExtent] {
	return func(yield func(format.SnapExtent) bool) {
		for e := range all {
			if !yield(format.SnapExtent{Start: e.Start, Len: e.Len, Vol: e.Loc.Vol, Seq: e.Loc.Seq, Off: e.Loc.Off}) {
				return
			}
		}
	}
}
