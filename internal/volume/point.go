package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
)

// Point names a point in a volume's history: a checkpoint label, a log
// sequence number, or a time. The zero Point is the head. The volume URL's
// syntax, the point's included, belongs to volref.
type Point = volref.Point

// ValidateLabel checks a checkpoint label (volref.ValidateLabel).
func ValidateLabel(label string) error { return volref.ValidateLabel(label) }

// ParsePoint parses what follows '@' in NAME@POINT (volref.ParsePoint).
func ParsePoint(s string) (Point, error) { return volref.ParsePoint(s) }

// readCheckpoint returns checkpoint label of volume id.
func (p *Pool) readCheckpoint(ctx context.Context, id, label string) (*format.CheckpointDoc, error) {
	return p.readCheckpointAt(ctx, format.CheckpointPrefix(id)+label)
}

// readCheckpointAt reads the checkpoint document at key.
func (p *Pool) readCheckpointAt(ctx context.Context, key string) (*format.CheckpointDoc, error) {
	label := key[strings.LastIndexByte(key, '/')+1:]
	var c format.CheckpointDoc
	switch err := getDoc(ctx, p.store, key, format.KindCheckpoint, &c); {
	case errors.Is(err, objstore.ErrNotFound):
		return nil, notFound("checkpoint", label)
	case err != nil:
		return nil, fmt.Errorf("read checkpoint %q: %w", label, err)
	}
	return &c, nil
}

// resolvePoint turns a point into a log sequence number of volume d.
func (p *Pool) resolvePoint(ctx context.Context, d *format.VolumeDesc, pt Point) (uint64, error) {
	switch {
	case pt.Label != "":
		c, err := p.readCheckpoint(ctx, d.ID, pt.Label)
		if err != nil {
			return 0, err
		}
		return c.Seq, nil
	case pt.HasSeq:
		return pt.Seq, nil
	case !pt.Time.IsZero():
		return p.seqAtTime(ctx, d, pt.Time)
	}
	return ^uint64(0), nil
}

// seqAtTime finds the last record written at or before t (binary search
// over record trailers; writers' clocks are assumed roughly monotonic).
func (p *Pool) seqAtTime(ctx context.Context, d *format.VolumeDesc, t time.Time) (uint64, error) {
	seqs, sizes, err := p.listSeqs(ctx, format.LogPrefix(d.ID))
	if err != nil {
		return 0, err
	}
	target := t.UnixNano()
	var ferr error
	timeOf := func(i int) int64 {
		r, err := p.readRecord(ctx, format.LogKey(d.ID, seqs[i]), sizes[seqs[i]])
		if err != nil {
			ferr = err
			return 0
		}
		return r.Time
	}
	i := sort.Search(len(seqs), func(i int) bool { return ferr == nil && timeOf(i) > target })
	if ferr != nil {
		return 0, fmt.Errorf("find the record at %s: %w", t.Format(time.RFC3339), ferr)
	}
	if i == 0 {
		if d.Parent != nil && len(seqs) > 0 {
			return 0, nil // the clone's initial state
		}
		return 0, fmt.Errorf("%w: %s is before the oldest retained record of %s", ErrInvalid, t.Format(time.RFC3339), d.Name)
	}
	return seqs[i-1], nil
}

// checkRetained refuses seq and time points too close to the edge of the
// retention window, where a concurrent GC may be deleting their records.
func (p *Pool) checkRetained(d *format.VolumeDesc, pt Point, img *image) error {
	if pt.IsHead() || pt.Label != "" || img.lastTime == 0 {
		return nil
	}
	edge := p.clock.Now().Add(-p.retention + time.Hour)
	if t := time.Unix(0, img.lastTime); t.Before(edge) {
		return fmt.Errorf("%w: point %s of %s (written %s) is outside the retention window of %s; use a checkpoint", ErrInvalid, pt, d.Name, t.UTC().Format(time.RFC3339), p.retention)
	}
	return nil
}

// loadPoint replays volume d up to point pt and checks that the whole
// prefix up to it is still available.
func (p *Pool) loadPoint(ctx context.Context, d *format.VolumeDesc, pt Point) (*image, error) {
	seq, err := p.resolvePoint(ctx, d, pt)
	if err != nil {
		return nil, err
	}
	img, err := p.loadImage(ctx, d, seq)
	if err != nil {
		return nil, err
	}
	if !pt.IsHead() && img.st.Seq != seq {
		return nil, fmt.Errorf("%w: point %s (seq %d) of %s is not available: history ends at seq %d or was collected", ErrInvalid, pt, seq, d.Name, img.st.Seq)
	}
	if err := p.checkRetained(d, pt, img); err != nil {
		return nil, err
	}
	return img, nil
}
