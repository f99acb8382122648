package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// ErrCheckpointExists: a checkpoint with that label already exists.
var ErrCheckpointExists = errors.New("checkpoint already exists")

// putCheckpoint stores a checkpoint document (created if-absent).
func (p *Pool) putCheckpoint(ctx context.Context, id string, c *format.CheckpointDoc) error {
	b, err := format.EncodeDoc(format.KindCheckpoint, c)
	if err != nil {
		return err
	}
	err = p.store.PutIfAbsent(ctx, format.CheckpointPrefix(id)+c.Label, b)
	if errors.Is(err, objstore.ErrExists) {
		return fmt.Errorf("checkpoint %q: %w", c.Label, ErrCheckpointExists)
	}
	if err != nil {
		return fmt.Errorf("write checkpoint %q: %w", c.Label, err)
	}
	return nil
}

// snapshotImage writes img's map as the snapshot at img.st.Seq.
func (p *Pool) snapshotImage(ctx context.Context, img *image) error {
	h := &format.SnapshotHeader{Volume: img.desc.ID, Seq: img.st.Seq, Epoch: img.st.Epoch, Writer: img.st.Writer,
		FenceSeq: img.fenceSeq, Time: img.lastTime, Size: img.size, Vols: img.vols}
	return p.writeSnapshot(ctx, h, img.m)
}

// Checkpoint labels the volume's durable head without attaching: it reads
// the log (so a writer elsewhere is not disturbed), writes a snapshot at the
// head and the label. Writes a live writer has not flushed are not included;
// use Volume.Checkpoint on the writer for flush-then-checkpoint.
func (p *Pool) Checkpoint(ctx context.Context, name, label string) (*Checkpoint, error) {
	if err := ValidateLabel(label); err != nil {
		return nil, err
	}
	d, img, err := p.loadHead(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := p.snapshotImage(ctx, img); err != nil {
		return nil, err
	}
	c := &format.CheckpointDoc{Label: label, Seq: img.st.Seq, Time: p.clock.Now().UTC()}
	if err := p.putCheckpoint(ctx, d.ID, c); err != nil {
		return nil, err
	}
	return checkpointOf(c), nil
}

// Checkpoint flushes the volume and labels the point it flushed to. It is
// O(map), not O(disk): a snapshot of the extent map plus a small document.
func (v *Volume) Checkpoint(ctx context.Context, label string) (*Checkpoint, error) {
	if err := ValidateLabel(label); err != nil {
		return nil, err
	}
	if v.w == nil {
		return v.pool.Checkpoint(ctx, v.desc.Name, label)
	}
	c, err := v.durableClone(ctx)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	h := v.snapHeader(c)
	v.mu.Unlock()
	// A writer that does not know it was fenced would label a point GC may
	// already be collecting: make sure nobody fenced us after that point.
	if err := v.stillOwner(ctx, c.seq); err != nil {
		return nil, err
	}
	if err := v.pool.writeSnapshot(ctx, h, c.m); err != nil {
		return nil, err
	}
	doc := &format.CheckpointDoc{Label: label, Seq: c.seq, Time: v.opts.Clock.Now().UTC()}
	if err := v.pool.putCheckpoint(ctx, v.desc.ID, doc); err != nil {
		return nil, err
	}
	v.log.Info("checkpoint", "label", label, "seq", c.seq)
	return checkpointOf(doc), nil
}

// stillOwner reads the records after seq and fails with ErrFenced if one
// is a fence of a newer epoch.
func (v *Volume) stillOwner(ctx context.Context, seq uint64) error {
	seqs, sizes, err := v.pool.listSeqsAfter(ctx, format.LogPrefix(v.desc.ID), seq, true)
	if err != nil {
		return err
	}
	for _, s := range seqs {
		if sizes[s] > 64<<10 {
			continue // data records are not fences
		}
		r, err := v.pool.readRecord(ctx, format.LogKey(v.desc.ID, s), sizes[s])
		if err != nil {
			return err
		}
		if r.Type == format.RecordFence && r.Epoch > v.w.Epoch() {
			v.mu.Lock()
			v.fenceLocked(s, r)
			v.mu.Unlock()
			return blockdev.ErrFenced
		}
	}
	return nil
}

// durableClone seals what is buffered, waits until it is durable and
// returns a clone of the map as of the last record written: the map at a
// log point every later attach will replay to.
func (v *Volume) durableClone(ctx context.Context) (*snapCandidate, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		if err := v.usableLocked(); err != nil {
			return nil, err
		}
		if v.open != nil {
			v.sealLocked()
		}
		if v.durableDone >= v.lastSealed {
			return &snapCandidate{seq: v.w.Prefix(), m: v.m.Clone(), vols: append([]string(nil), v.vols...), time: v.lastTime, size: uint64(v.Size())}, nil
		}
		seg := v.segs[v.lastSealed]
		c := &snapCandidate{seg: seg.id, seq: seg.seq, m: v.m.Clone(), vols: append([]string(nil), v.vols...), time: seg.rec.Time, moves: v.moves, size: uint64(v.Size())}
		for v.durableDone < c.seg {
			if err := v.usableLocked(); err != nil {
				return nil, err
			}
			if err := v.waitLocked(ctx); err != nil {
				return nil, err
			}
		}
		if v.moves == c.moves {
			return c, nil
		}
		// A segment moved while we waited; its map entries changed. Retry.
	}
}

// CheckpointInfo is a checkpoint as `urldisk checkpoints` lists it.
type CheckpointInfo struct {
	Checkpoint
	// UniqueBytes are stored bytes referenced by this checkpoint and by no
	// other checkpoint nor the head.
	UniqueBytes uint64 `json:"unique_bytes"`
}

// Checkpoints lists the volume's checkpoints, oldest first.
func (p *Pool) Checkpoints(ctx context.Context, name string) ([]CheckpointInfo, error) {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	docs, err := p.listCheckpoints(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	// Bytes per (volume, record) referenced by each map.
	type recKey struct {
		vol string
		seq uint64
	}
	refs := func(img *image) map[recKey]uint64 {
		out := map[recKey]uint64{}
		for e := range img.m.All() {
			out[recKey{img.vols[e.Loc.Vol], e.Loc.Seq}] += e.Len
		}
		return out
	}
	head, err := p.loadImage(ctx, d, ^uint64(0))
	if err != nil {
		return nil, err
	}
	maps := []map[recKey]uint64{refs(head)}
	for _, c := range docs {
		img, err := p.loadImage(ctx, d, c.Seq)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %q: %w", c.Label, err)
		}
		maps = append(maps, refs(img))
	}
	out := make([]CheckpointInfo, len(docs))
	for i, c := range docs {
		out[i].Checkpoint = *checkpointOf(c)
		for k, n := range maps[i+1] {
			shared := false
			for j, m := range maps {
				if j != i+1 && m[k] > 0 {
					shared = true
					break
				}
			}
			if !shared {
				out[i].UniqueBytes += n
			}
		}
	}
	return out, nil
}

func (p *Pool) listCheckpoints(ctx context.Context, id string) ([]*format.CheckpointDoc, error) {
	prefix := format.CheckpointPrefix(id)
	var labels []string
	if err := p.store.List(ctx, prefix, func(oi objstore.ObjectInfo) error {
		labels = append(labels, strings.TrimPrefix(oi.Key, prefix))
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	var docs []*format.CheckpointDoc
	for _, l := range labels {
		c, err := p.readCheckpoint(ctx, id, l)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, c)
	}
	sort.Slice(docs, func(i, j int) bool {
		return docs[i].Seq < docs[j].Seq || docs[i].Seq == docs[j].Seq && docs[i].Label < docs[j].Label
	})
	return docs, nil
}

// RemoveCheckpoint deletes a checkpoint label; its data goes at a GC after
// the grace period.
func (p *Pool) RemoveCheckpoint(ctx context.Context, name, label string) error {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return err
	}
	key := format.CheckpointPrefix(d.ID) + label
	b, err := p.store.Get(ctx, key)
	if errors.Is(err, objstore.ErrNotFound) {
		return notFound("checkpoint", label)
	}
	if err != nil {
		return fmt.Errorf("remove checkpoint %q: %w", label, err)
	}
	// Keep a copy for the grace period: a clone may be copying its map.
	if err := p.store.Put(ctx, format.VolsPrefix+d.ID+"/"+removedCkptDir+label, b); err != nil {
		return fmt.Errorf("remove checkpoint %q: %w", label, err)
	}
	if err := p.store.Delete(ctx, key); err != nil {
		return fmt.Errorf("remove checkpoint %q: %w", label, err)
	}
	return nil
}

// Restore resets the volume, in place, to point pt (usually a checkpoint):
// it appends a restore record, so later checkpoints stay valid and history
// is kept. The data is durable when Restore returns.
func (v *Volume) Restore(ctx context.Context, pt Point) (uint64, error) {
	if v.w == nil {
		return 0, fmt.Errorf("restore: %w", blockdev.ErrReadOnly)
	}
	if pt.IsHead() {
		return 0, fmt.Errorf("%w: restore needs a checkpoint, seq or time", ErrInvalid)
	}
	target, err := v.pool.resolvePoint(ctx, v.desc, pt)
	if err != nil {
		return 0, err
	}
	// Make sure a snapshot exists at the target: replay uses it.
	if _, err := v.pool.store.Stat(ctx, format.SnapKey(v.desc.ID, target)); errors.Is(err, objstore.ErrNotFound) {
		img, err := v.pool.loadPoint(ctx, v.desc, Point{Seq: target, HasSeq: true})
		if err != nil {
			return 0, err
		}
		if err := v.pool.snapshotImage(ctx, img); err != nil {
			return 0, err
		}
	} else if err != nil {
		return 0, err
	}
	v.mu.Lock()
	if err := v.usableLocked(); err != nil {
		v.mu.Unlock()
		return 0, err
	}
	if v.open != nil {
		v.sealLocked()
	}
	img := &image{desc: v.desc, vols: v.vols, volIdx: map[string]uint32{}, m: extmap.New()}
	for i, id := range v.vols {
		img.volIdx[id] = uint32(i)
	}
	if err := v.pool.loadSnapshot(ctx, img, v.desc.ID, target, false); err != nil {
		v.mu.Unlock()
		return 0, err
	}
	seg, err := v.openLocked(0)
	if err != nil {
		v.mu.Unlock()
		return 0, err
	}
	seg.restore = &format.Record{Type: format.RecordRestore, RestoreVol: v.desc.ID, RestoreSeq: target}
	seq := seg.seq
	// The new map first: sealing may take a snapshot candidate of it.
	v.m, v.vols = img.m, img.vols
	v.size.Store(img.size) // a restore brings back the size at its target too
	v.sealLocked()
	v.mu.Unlock()
	if err := v.Flush(ctx); err != nil {
		return 0, err
	}
	v.log.Info("restored", "point", pt.String(), "target_seq", target, "record", seq)
	return target, nil
}
