package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/volref"
)

// Clone creates volume dst in the same pool whose initial state is src at
// point pt (head, checkpoint, seq or time). The clone shares src's records:
// only an extent-map snapshot and a descriptor are written, O(map) and
// independent of the disk size.
func (p *Pool) Clone(ctx context.Context, src string, pt Point, dst string) (*format.VolumeDesc, error) {
	if err := volref.ValidateName(dst); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	sd, err := p.Resolve(ctx, src)
	if err != nil {
		return nil, err
	}
	// A clone shares the lineage's data key: it must open (the right key,
	// or no clone), and the clone's descriptor carries the same wrapping.
	if _, err := p.dataKey(ctx, sd); err != nil {
		return nil, fmt.Errorf("clone %s: %w", src, err)
	}
	img, err := p.loadPoint(ctx, sd, pt)
	if err != nil {
		return nil, err
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	dd := &format.VolumeDesc{ID: id, Name: dst, Size: img.size, BlockSize: sd.BlockSize, Created: p.clock.Now().UTC(),
		Parent: &format.ParentRef{ID: sd.ID, Seq: img.st.Seq}, Encryption: sd.Encryption, Compression: sd.Compression}
	// The clone's volume table is [clone, source's table...]: shift indices.
	h := &format.SnapshotHeader{Volume: id, Seq: 0, Size: img.size, Time: p.clock.Now().UnixNano(), Vols: append([]string{id}, img.vols...)}
	b := format.AppendSnapshotFrames(nil, h, func(yield func(format.SnapExtent) bool) {
		for e := range img.m.All() {
			if !yield(format.SnapExtent{Start: e.Start, Len: e.Len, Vol: e.Loc.Vol + 1, Seq: e.Loc.Seq, Off: e.Loc.Off}) {
				return
			}
		}
	}, p.frames.forSnapshot(img.m, img.vols, 1))
	if err := p.bind(ctx, dd, b); err != nil {
		return nil, err
	}
	return dd, nil
}

// OpenAt attaches the named volume read-only at point pt. Any number of
// hosts may do this while a writer is active; it never fences anyone.
func (p *Pool) OpenAt(ctx context.Context, name string, pt Point, o Options) (*Volume, error) {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	if pt.IsHead() {
		return p.open(ctx, d, o, ^uint64(0))
	}
	if !o.ReadOnly {
		return nil, fmt.Errorf("open %s@%s: %w: a point in history can only be opened read-only", name, pt, ErrInvalid)
	}
	if o.Follow > 0 {
		return nil, fmt.Errorf("open %s@%s: %w: --follow tails the head, not a point", name, pt, ErrInvalid)
	}
	img, err := p.loadPoint(ctx, d, pt)
	if err != nil {
		return nil, err
	}
	return p.openImage(ctx, img, o)
}

// follow tails the log of a read-only volume: every interval it applies the
// records written since, so readers see a writer's flushed data.
func (v *Volume) follow(img *image, every time.Duration) {
	var gaps followGaps
	v.tick(every, func() {
		recs, err := v.pool.fetchRecords(v.ctx, img, ^uint64(0))
		if err != nil {
			if v.ctx.Err() == nil {
				v.log.Warn("follow: reading new records failed", "err", err)
			}
			return
		}
		if len(recs) == 0 {
			gaps.check(v, img)
			return
		}
		defer gaps.check(v, img)
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, r := range recs {
			if err := v.pool.apply(v.ctx, img, r); err != nil {
				v.failLocked(fmt.Errorf("follow: %w", err))
				break
			}
		}
		v.m, v.vols, v.st = img.m, img.vols, img.st
		v.size.Store(img.size)
		v.broadcastLocked()
	})
}

// Head returns the last log sequence number the volume reflects.
func (v *Volume) Head() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.w != nil {
		return v.w.Prefix()
	}
	return v.st.Seq
}

var _ blockdev.Device = (*Volume)(nil)

// followGaps reports, for a follower, records deleted from the log after
// it opened: replay stops before them (prefix consistency), so without a
// word the replica would serve that point forever while the writer goes
// on. Owned by the follow goroutine.
type followGaps struct {
	checked  [2]uint64 // (head, last listed seq) of the last check: the log has not moved since
	reported uint64    // First of the gap last reported, so each is logged once
}

// check runs after each follow round. A gap that is a writer's upload
// still in flight (records landing out of order) is not loss and passes;
// checkGap reads the trailers after the gap, so it runs only when the
// listing changed.
func (g *followGaps) check(v *Volume, img *image) {
	if len(img.beyond) == 0 {
		g.checked, g.reported = [2]uint64{}, 0
		return
	}
	now := [2]uint64{img.st.Seq, img.beyond[len(img.beyond)-1]}
	if now == g.checked {
		return
	}
	err := v.pool.checkGap(v.ctx, img, ^uint64(0))
	var ge *GapError
	switch {
	case errors.As(err, &ge):
		g.checked = now
		if ge.Gap.First != g.reported {
			g.reported = ge.Gap.First
			v.log.Error("follow: acknowledged log records are missing; serving the last consistent point until they are back", "serving_seq", img.st.Seq, "err", err)
		}
	case err != nil:
		if v.ctx.Err() == nil {
			v.log.Warn("follow: checking a gap in the log failed", "err", err)
		}
	default:
		g.checked = now
	}
}
