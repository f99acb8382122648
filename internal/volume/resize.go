package volume

import (
	"context"
	"fmt"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/format"
)

// A volume grows by a resize record in its log, so the size is ordered with
// the writes: a view at an earlier seq (point-in-time read, checkpoint,
// clone, restore) has the size of that seq, and a write beyond the old end
// lands in a record after the resize. The descriptor keeps the creation size;
// snapshots carry the size at their seq. Volumes never shrink: a filesystem
// on them would lose its tail.

// checkGrownSize says whether size is a size d can have: at least its
// creation size and a whole number of blocks.
func checkGrownSize(d *format.VolumeDesc, size uint64) error {
	if size < d.Size || d.BlockSize == 0 || size%uint64(d.BlockSize) != 0 {
		return fmt.Errorf("%w: size %d for volume %s (created at %d bytes, blocks of %d)", format.ErrCorrupt, size, d.ID, d.Size, d.BlockSize)
	}
	return nil
}

// applyResize replays a resize record onto img.
func applyResize(img *image, r *format.Record) error {
	if r.NewSize < img.size {
		return fmt.Errorf("replay volume %s: record %d: %w: resize to %d below size %d", img.desc.Name, r.Seq, format.ErrCorrupt, r.NewSize, img.size)
	}
	if err := checkGrownSize(img.desc, r.NewSize); err != nil {
		return fmt.Errorf("replay volume %s: record %d: %w", img.desc.Name, r.Seq, err)
	}
	img.size = r.NewSize
	return nil
}

// Resize grows the volume to size bytes and returns once the resize record
// is durable. Writes up to size are accepted as soon as it is sealed. size
// must be a multiple of the block size and not below the current size (the
// same size is a no-op).
func (v *Volume) Resize(ctx context.Context, size uint64) error {
	if v.w == nil {
		return fmt.Errorf("resize: %w", blockdev.ErrReadOnly)
	}
	v.mu.Lock()
	cur := uint64(v.Size())
	if err := validResize(v.desc, cur, size); err != nil || size == cur {
		v.mu.Unlock()
		return err
	}
	if err := v.usableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	// Writes so far (all within the old size) go into the records before it.
	if v.open != nil {
		v.sealLocked()
	}
	seg, err := v.openLocked(0)
	if err != nil {
		v.mu.Unlock()
		return err
	}
	seg.restore = &format.Record{Type: format.RecordResize, NewSize: size}
	seq := seg.seq
	// Before sealing: a snapshot candidate at this seq records the new size.
	v.size.Store(size)
	v.sealLocked()
	v.mu.Unlock()
	if err := v.Flush(ctx); err != nil {
		return fmt.Errorf("resize %s: %w", v.desc.Name, err)
	}
	v.log.Info("resized", "from", cur, "to", size, "record", seq)
	return nil
}

// validResize checks a requested new size against the current one.
func validResize(d *format.VolumeDesc, cur, size uint64) error {
	switch {
	case size < cur:
		return fmt.Errorf("%w: cannot shrink volume %s from %d to %d bytes (only growing is supported)", ErrInvalid, d.Name, cur, size)
	case size%uint64(d.BlockSize) != 0:
		return fmt.Errorf("%w: size %d for volume %s is not a multiple of its block size %d", ErrInvalid, size, d.Name, d.BlockSize)
	}
	return nil
}

// HeadSize returns the size of volume name at its durable head (the
// descriptor holds only the creation size). It replays the log's tail.
func (p *Pool) HeadSize(ctx context.Context, name string) (uint64, error) {
	_, img, err := p.loadHead(ctx, name)
	if err != nil {
		return 0, err
	}
	return img.size, nil
}
