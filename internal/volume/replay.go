package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/objstore"
)

// image is a volume's state as replayed from its log: the extent map and
// the journal state after record st.Seq.
type image struct {
	desc *format.VolumeDesc
	st   journal.State
	// size is the volume's size at st.Seq: desc.Size (the creation size)
	// until a snapshot or a resize record says more.
	size uint64
	m    *extmap.Map
	// vols is the volume table extent locations index into; vols[0] is desc.ID.
	vols   []string
	volIdx map[string]uint32

	lastTime    int64  // time of the last replayed record
	snapSeq     uint64 // seq of the snapshot replay started from (0: none)
	sinceSnap   int    // records replayed after snapSeq
	fenceMeta   []byte // meta of the fence that owns the current epoch
	fenceSeq    uint64 // seq of that fence
	records     int    // records seen in the log listing
	recordBytes int64  // their total size
	snapshots   int
	firstLogSeq uint64

	// snapSeqs are the snapshots listed when the image was loaded; beyond
	// the records listed after the first gap (up to the replay limit), with
	// their sizes: what checkGap needs to tell loss from a crash leftover.
	snapSeqs []uint64
	beyond   []uint64
	sizes    map[uint64]int64
}

func newImage(desc *format.VolumeDesc) *image {
	return &image{desc: desc, size: desc.Size, m: extmap.New(), vols: []string{desc.ID}, volIdx: map[string]uint32{desc.ID: 0}}
}

func (img *image) volIndex(id string) uint32 {
	if i, ok := img.volIdx[id]; ok {
		return i
	}
	i := uint32(len(img.vols))
	img.vols = append(img.vols, id)
	img.volIdx[id] = i
	return i
}

// listSeqs returns the sequence numbers (and sizes) under prefix, ascending.
func (p *Pool) listSeqs(ctx context.Context, prefix string) ([]uint64, map[uint64]int64, error) {
	return p.listSeqsAfter(ctx, prefix, 0, false)
}

// listSeqsAfter is listSeqs restricted to sequence numbers above after
// (when skip), listing only that part where the store allows.
func (p *Pool) listSeqsAfter(ctx context.Context, prefix string, after uint64, skip bool) ([]uint64, map[uint64]int64, error) {
	var seqs []uint64
	sizes := map[uint64]int64{}
	start := ""
	if skip {
		start = fmt.Sprintf("%s%016x", prefix, after)
	}
	err := objstore.ListAfter(ctx, p.store, prefix, start, func(oi objstore.ObjectInfo) error {
		s, err := format.ParseSeqKey(oi.Key)
		if err != nil {
			return nil // not ours; ignore
		}
		seqs = append(seqs, s)
		sizes[s] = oi.Size
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs, sizes, nil
}

// loadImage replays volume desc up to (and including) record limit. It
// fails with a *GapError (ErrLogGap) if records the replay needs are
// missing but were provably acknowledged (see checkGap).
func (p *Pool) loadImage(ctx context.Context, desc *format.VolumeDesc, limit uint64) (*image, error) {
	for attempt := 0; ; attempt++ {
		img, err := p.loadImageOnce(ctx, desc, limit)
		var ge *GapError
		if !errors.As(err, &ge) || attempt >= 3 {
			return img, err
		}
		// GC may have written a newer snapshot and collected the records
		// below it after we listed the snapshots: a gap below a snapshot
		// we did not see is not loss. Start again from the newest one.
		snaps, _, lerr := p.listSeqs(ctx, format.SnapPrefix(desc.ID))
		if lerr != nil {
			return nil, lerr
		}
		if !slices.ContainsFunc(snaps, func(s uint64) bool { return s > ge.Base && s <= limit && !slices.Contains(ge.snaps, s) }) {
			return img, err
		}
	}
}

func (p *Pool) loadImageOnce(ctx context.Context, desc *format.VolumeDesc, limit uint64) (*image, error) {
	img := newImage(desc)
	snaps, _, err := p.listSeqs(ctx, format.SnapPrefix(desc.ID))
	if err != nil {
		return nil, err
	}
	img.snapshots = len(snaps)
	loaded := false
	for i := len(snaps) - 1; i >= 0; i-- {
		if snaps[i] > limit {
			continue
		}
		err := p.loadSnapshot(ctx, img, desc.ID, snaps[i], true)
		if err == nil {
			loaded = true
			break
		}
		if !errors.Is(err, format.ErrCorrupt) {
			return nil, err
		}
		p.log.Error("snapshot is corrupt; falling back to an older one", "volume", desc.Name, "seq", snaps[i], "err", err)
		img = newImage(desc)
		img.snapshots = len(snaps)
	}
	img.snapSeqs = snaps
	if !loaded && desc.Parent != nil {
		return nil, fmt.Errorf("volume %s: clone has no usable initial snapshot", desc.Name)
	}
	if err := p.replayFrom(ctx, img, limit); err != nil {
		return nil, err
	}
	return img, nil
}

// loadSnapshot replaces img's map with snapshot seq of volume id. With
// setState the journal state comes from the snapshot too (attach); without
// it only the map is replaced (a restore record).
func (p *Pool) loadSnapshot(ctx context.Context, img *image, id string, seq uint64, setState bool) error {
	b, err := p.store.Get(ctx, format.SnapKey(id, seq))
	if err != nil {
		return fmt.Errorf("read snapshot %d of volume %s: %w", seq, id, err)
	}
	m := extmap.New()
	var vols []string
	idx := map[uint32]uint32{}
	h, err := format.DecodeSnapshotFrames(b, func(x format.SnapExtent) error {
		i, ok := idx[x.Vol]
		if !ok {
			i = img.volIndex(vols[x.Vol])
			idx[x.Vol] = i
		}
		m.Set(x.Start, x.Len, extmap.Loc{Vol: i, Seq: x.Seq, Off: x.Off})
		return nil
	}, func(h *format.SnapshotHeader) { vols = h.Vols }, func(f format.SnapFrames) error {
		p.frames.set(vols[f.Vol], f.Seq, f.Sizes)
		return nil
	})
	if err != nil {
		return fmt.Errorf("snapshot %d of volume %s: %w", seq, id, err)
	}
	if h.Seq != seq || h.Volume != id {
		return fmt.Errorf("snapshot %d of volume %s: %w: header names seq %d of %s", seq, id, format.ErrCorrupt, h.Seq, h.Volume)
	}
	if err := checkGrownSize(img.desc, h.Size); err != nil {
		return fmt.Errorf("snapshot %d of volume %s: %w", seq, id, err)
	}
	img.m, img.size = m, h.Size
	if setState {
		img.st = journal.State{Seq: h.Seq, Epoch: h.Epoch, Writer: h.Writer}
		img.lastTime = h.Time
		img.snapSeq = h.Seq
		img.fenceSeq, img.fenceMeta = h.FenceSeq, nil
		img.sinceSnap = 0
	}
	return nil
}

// readRecord fetches and decodes the trailer of record key of the given size.
func (p *Pool) readRecord(ctx context.Context, key string, size int64) (*format.Record, error) {
	tail := min(size, 64<<10)
	buf := make([]byte, tail)
	n, err := p.store.GetRange(ctx, key, size-tail, buf)
	if err != nil {
		return nil, err
	}
	buf = buf[:n]
	tl, err := format.TrailerLen(buf)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	if need := int64(tl) + 8; need > int64(len(buf)) && need <= size {
		buf = make([]byte, need)
		if n, err = p.store.GetRange(ctx, key, size-need, buf); err != nil {
			return nil, err
		}
		buf = buf[:n]
	}
	r, err := format.DecodeRecord(buf, size)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	return r, nil
}

// readRecordAt reads record seq of volume id whose size is unknown.
func (p *Pool) readRecordAt(ctx context.Context, id string, seq uint64) (*format.Record, error) {
	key := format.LogKey(id, seq)
	oi, err := p.store.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	return p.readRecord(ctx, key, oi.Size)
}

// replayFrom applies the records after img.st.Seq, in order, up to the
// first gap or limit, and then fails with a *GapError if that gap is loss.
func (p *Pool) replayFrom(ctx context.Context, img *image, limit uint64) error {
	recs, err := p.fetchRecords(ctx, img, limit)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := p.apply(ctx, img, r); err != nil {
			return err
		}
	}
	return p.checkGap(ctx, img, limit)
}

// checkGap decides whether replay stopped at img.st.Seq because the log
// ends there, because a crashed writer left records after a slot that
// never landed (nothing from that slot on was acknowledged: replay stops
// there and the next fence voids the leftovers), or because records were
// deleted (journal.Gaps: a later record's durable watermark or a snapshot
// vouches for them). Only the last is an error: replaying past it would
// silently roll the volume back, and a fence there would void the intact
// records after it for good.
func (p *Pool) checkGap(ctx context.Context, img *image, limit uint64) error {
	head := img.st.Seq
	if len(img.beyond) == 0 && !slices.ContainsFunc(img.snapSeqs, func(s uint64) bool { return s > head && s <= limit }) {
		return nil
	}
	marks := make([]journal.Mark, len(img.beyond))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, s := range img.beyond {
		g.Go(func() error {
			r, err := p.readRecord(gctx, format.LogKey(img.desc.ID, s), img.sizes[s])
			switch {
			case errors.Is(err, format.ErrCorrupt):
				marks[i] = journal.Mark{Seq: s} // vouches for nothing; verify reports it
			case err != nil:
				return fmt.Errorf("check the log of volume %s after seq %d: %w", img.desc.Name, head, err)
			default:
				marks[i] = journal.Mark{Seq: s, Durable: r.Durable}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if gap, lost := journal.FirstLoss(journal.Gaps(head, limit, marks, img.snapSeqs)); lost {
		return &GapError{Volume: img.desc.Name, Gap: gap, Base: img.snapSeq, snaps: img.snapSeqs}
	}
	return nil
}

// fetchRecords lists img's log and reads, in parallel, the trailers of the
// consecutive records after img.st.Seq (up to limit). It updates img's log
// statistics but not its state.
func (p *Pool) fetchRecords(ctx context.Context, img *image, limit uint64) ([]*format.Record, error) {
	id := img.desc.ID
	seqs, sizes, err := p.listSeqsAfter(ctx, format.LogPrefix(id), img.st.Seq, true)
	if err != nil {
		return nil, err
	}
	var todo []uint64
	img.beyond, img.sizes = nil, sizes
	for _, s := range seqs {
		if s <= img.st.Seq || s > limit {
			continue
		}
		if len(img.beyond) > 0 || s != img.st.Seq+uint64(len(todo))+1 {
			img.beyond = append(img.beyond, s) // after the first gap: prefix consistency stops replay before it
			continue
		}
		todo = append(todo, s)
	}
	recs := make([]*format.Record, len(todo))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, s := range todo {
		g.Go(func() error {
			r, err := p.readRecord(gctx, format.LogKey(id, s), sizes[s])
			if err != nil {
				return fmt.Errorf("replay volume %s: %w", img.desc.Name, err)
			}
			recs[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return recs, nil
}

// apply replays one record onto img.
func (p *Pool) apply(ctx context.Context, img *image, r *format.Record) error {
	if r.Volume != img.desc.ID {
		return fmt.Errorf("replay volume %s: record %d: %w: belongs to volume %s", img.desc.Name, r.Seq, format.ErrCorrupt, r.Volume)
	}
	st, v, err := journal.Replay(img.st, r)
	if err != nil {
		return fmt.Errorf("replay volume %s: %w", img.desc.Name, err)
	}
	img.st = st
	if v != journal.Void {
		img.lastTime = max(img.lastTime, r.Time) // void leftovers carry stale clocks
	}
	img.sinceSnap++
	switch v {
	case journal.Fence:
		img.fenceMeta, img.fenceSeq = r.Meta, r.Seq
	case journal.Apply:
		switch r.Type {
		case format.RecordRestore:
			return p.loadSnapshot(ctx, img, r.RestoreVol, r.RestoreSeq, false)
		case format.RecordResize:
			return applyResize(img, r)
		}
		applyExtents(img.m, 0, r.Seq, r.Extents, img.size)
		p.frames.note(img.desc.ID, r)
	}
	return nil
}

// applyExtents applies a data record's extents (in order) to m.
func applyExtents(m *extmap.Map, vol uint32, seq uint64, exts []format.Extent, size uint64) {
	for _, x := range exts {
		if x.Off >= size {
			continue
		}
		n := min(x.Len, size-x.Off)
		if x.Zero {
			m.Clear(x.Off, n)
		} else {
			m.Set(x.Off, n, extmap.Loc{Vol: vol, Seq: seq, Off: x.DataOff})
		}
	}
}
