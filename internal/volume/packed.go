package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// frameTables holds the frame tables of the packed records (compressed
// volumes) this pool has sealed, replayed or found in a snapshot, so a
// cold read of any chunk of them is one ranged GET at a known position.
// A slot's record never changes once created, so an entry is valid for
// every volume of the pool that references the record; only a slot this
// process sealed and then lost to another writer (journal moves) is
// forgotten again. Safe for concurrent use.
type frameTables struct {
	mu sync.RWMutex
	m  map[recKey]format.FrameTable
}

func newFrameTables() *frameTables { return &frameTables{m: map[recKey]format.FrameTable{}} }

func (t *frameTables) get(vol string, seq uint64) (format.FrameTable, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	ft, ok := t.m[recKey{vol, seq}]
	return ft, ok
}

// note records the frame table of r (a record of volume vol), if packed.
func (t *frameTables) note(vol string, r *format.Record) {
	if r.Frames == nil || r.DataLen == 0 {
		return
	}
	t.set(vol, r.Seq, r.Frames)
}

func (t *frameTables) set(vol string, seq uint64, sizes []uint32) {
	ft := format.NewFrameTable(sizes)
	t.mu.Lock()
	t.m[recKey{vol, seq}] = ft
	t.mu.Unlock()
}

func (t *frameTables) forget(vol string, seq uint64) {
	t.mu.Lock()
	delete(t.m, recKey{vol, seq})
	t.mu.Unlock()
}

// forSnapshot returns the frame tables of the packed records the extents
// of m reference (vols is m's volume table; index shift is added to the
// snapshot's volume indices), for a snapshot that lets an attach from it
// read them with one GET.
func (t *frameTables) forSnapshot(m *extmap.Map, vols []string, shift uint32) []format.SnapFrames {
	type ref struct {
		vol uint32
		seq uint64
	}
	seen := map[ref]bool{}
	var out []format.SnapFrames
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(t.m) == 0 {
		return nil
	}
	for e := range m.All() {
		r := ref{e.Loc.Vol, e.Loc.Seq}
		if seen[r] {
			continue
		}
		seen[r] = true
		if ft, ok := t.m[recKey{vols[r.vol], r.seq}]; ok {
			out = append(out, format.SnapFrames{Vol: r.vol + shift, Seq: r.seq, Sizes: ft.Sizes()})
		}
	}
	return out
}

// frameTable returns the frame table of record seq of volume vol if it is
// packed. On a compressed volume a record whose table is not known yet (a
// snapshot written before it was, or by an older binary) has its trailer
// read once; records of a volume created without compression are never
// packed.
func (v *Volume) frameTable(ctx context.Context, vol string, seq uint64) (format.FrameTable, bool, error) {
	if ft, ok := v.pool.frames.get(vol, seq); ok {
		return ft, true, nil
	}
	if v.desc.Compression == "" {
		return format.FrameTable{}, false, nil
	}
	r, err := v.pool.readRecordAt(ctx, vol, seq)
	if err != nil {
		return format.FrameTable{}, false, fmt.Errorf("read the frame table of record %d of volume %s: %w", seq, vol, err)
	}
	if r.Frames == nil {
		return format.FrameTable{}, false, nil
	}
	v.pool.frames.note(vol, r)
	ft, _ := v.pool.frames.get(vol, seq)
	return ft, true, nil
}

// openPackedFrames is verifyFrames for packed frames: b holds frames
// c.first.. of record key as laid out by ft (fetched from frame c.first's
// position); each is verified (or authenticated and decrypted with k) and
// decompressed into out (ChunkSize bytes per frame).
func openPackedFrames(c *fetchCall, b []byte, ft format.FrameTable, k *format.DataKey, vol string, seq uint64, out []byte) error {
	first := int(c.first)
	nf := min(c.count, ft.Frames()-first)
	c.frames = make([][]byte, 0, max(nf, 0))
	c.sums = make([]cache.Sums, max(nf, 0))
	base := ft.Off[first]
	for i := 0; i < nf; i++ {
		lo, hi := ft.Off[first+i]-base, ft.Off[first+i+1]-base
		if int(hi) > len(b) {
			if i == 0 {
				return fmt.Errorf("%w: packed frame truncated: %d of %d bytes", format.ErrCorrupt, len(b), hi)
			}
			break
		}
		data, err := format.OpenPacked(b[lo:hi], k, vol, seq, uint64(first+i), out[i*format.ChunkSize:(i+1)*format.ChunkSize])
		if err != nil {
			if i == 0 {
				return err
			}
			break // fetched again on its own, which reports it
		}
		cache.SubBlockSums(data, &c.sums[i])
		c.frames = append(c.frames, data)
	}
	if len(c.frames) == 0 {
		return fmt.Errorf("%w: record %d of volume %s has no frame %d", format.ErrCorrupt, seq, vol, first)
	}
	return nil
}

// logicalLogBytes returns the data the given log records of volume id hold
// (seq → object size). Fixed-stride records' is computed from their size;
// a compressed volume's records are packed, so their trailers are read
// (in parallel) for their data length.
func (p *Pool) logicalLogBytes(ctx context.Context, id string, d *format.VolumeDesc, sizes map[uint64]int64) (int64, error) {
	sealed := d != nil && d.Encryption != nil
	if d == nil || d.Compression == "" {
		var n int64
		for _, size := range sizes {
			n += logicalBytes(size, sealed)
		}
		return n, nil
	}
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for seq, size := range sizes {
		g.Go(func() error {
			r, err := p.readRecord(gctx, format.LogKey(id, seq), size)
			switch {
			case errors.Is(err, format.ErrCorrupt):
				total.Add(logicalBytes(size, sealed)) // verify reports it
			case errors.Is(err, objstore.ErrNotFound):
				// collected meanwhile
			case err != nil:
				return fmt.Errorf("read record %d of volume %s for its data length: %w", seq, id, err)
			default:
				total.Add(int64(r.DataLen))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return total.Load(), nil
}
