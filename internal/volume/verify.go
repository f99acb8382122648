package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/objstore"
)

// VerifyOptions configure Pool.Verify.
type VerifyOptions struct {
	// Deep also reads every data chunk of every record in the log and
	// checks its frame CRC (a full read of the volume's objects).
	Deep bool
}

// Problem kinds a verification reports.
const (
	ProblemBinding          = "binding"           // names/<name> or volume.json unreadable, corrupt or inconsistent
	ProblemLogGap           = "log-gap"           // acknowledged records missing (journal.Gaps: lost)
	ProblemCorruptRecord    = "corrupt-record"    // a record's trailer (or, deep, a chunk) fails its checksum
	ProblemCorruptSnapshot  = "corrupt-snapshot"  // a snapshot fails to decode
	ProblemDanglingSnapshot = "dangling-snapshot" // a snapshot's map references records that do not exist
	ProblemCheckpoint       = "checkpoint"        // a checkpoint that cannot be decoded or has no snapshot
	ProblemReplay           = "replay"            // the head does not replay (other than a gap)
)

// VerifyProblem is one thing wrong with a volume.
type VerifyProblem struct {
	Kind   string `json:"kind"`
	Key    string `json:"key,omitempty"` // the object concerned, relative to the pool
	Detail string `json:"detail"`
}

// VerifyReport is what Pool.Verify found.
type VerifyReport struct {
	Volume string `json:"volume"`
	ID     string `json:"id,omitempty"`
	// Records and Snapshots count the objects listed; Checkpoints the labels.
	Records     int `json:"records"`
	Snapshots   int `json:"snapshots"`
	Checkpoints int `json:"checkpoints"`
	// Base is the newest snapshot that decodes (where replay starts); Head
	// the last seq replay reaches from it.
	Base uint64 `json:"base"`
	Head uint64 `json:"head"`
	// Leftovers are gaps a crashed writer left (nothing in or after them
	// was acknowledged): expected, not problems.
	Leftovers []journal.Gap `json:"crash_leftover_gaps,omitempty"`
	// ChunksChecked counts the data chunks read and verified (Deep).
	ChunksChecked int             `json:"chunks_checked"`
	Deep          bool            `json:"deep"`
	Problems      []VerifyProblem `json:"problems"`
}

// OK reports whether nothing is wrong.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

func (r *VerifyReport) add(kind, key, format string, args ...any) {
	r.Problems = append(r.Problems, VerifyProblem{Kind: kind, Key: key, Detail: fmt.Sprintf(format, args...)})
}

// Verify checks volume name without changing anything: its name binding
// and descriptor, every record's trailer checksum, every snapshot (decodes,
// references only records that exist), every checkpoint (decodes, has its
// snapshot), gaps in the log (loss versus crash leftovers, journal.Gaps),
// and that the head replays; with Deep, every chunk of every record. The
// error is for what prevented checking (the store unreachable, no such
// volume); what is wrong with the volume is in the report.
func (p *Pool) Verify(ctx context.Context, name string, o VerifyOptions) (*VerifyReport, error) {
	rep := &VerifyReport{Volume: name, Deep: o.Deep, Problems: []VerifyProblem{}}
	desc, err := p.Resolve(ctx, name)
	switch {
	case errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid):
		return nil, fmt.Errorf("verify: %w", err)
	case errors.Is(err, format.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound):
		// The name is bound but its document or the descriptor it names
		// is corrupt or missing: the volume cannot be opened at all.
		rep.add(ProblemBinding, format.NameKey(name), "%v", err)
		return rep, nil
	case err != nil:
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	rep.ID = desc.ID
	if desc.Name != name {
		rep.add(ProblemBinding, format.VolumeKey(desc.ID), "descriptor names volume %q, but names/%s points at it", desc.Name, name)
	}

	logSeqs, sizes, err := p.listSeqs(ctx, format.LogPrefix(desc.ID))
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	snapSeqs, _, err := p.listSeqs(ctx, format.SnapPrefix(desc.ID))
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	rep.Records, rep.Snapshots = len(logSeqs), len(snapSeqs)

	// Every record's trailer, in parallel.
	recs := make([]*format.Record, len(logSeqs))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, s := range logSeqs {
		g.Go(func() error {
			key := format.LogKey(desc.ID, s)
			r, err := p.readRecord(gctx, key, sizes[s])
			if errors.Is(err, format.ErrCorrupt) {
				mu.Lock()
				rep.add(ProblemCorruptRecord, key, "%v", err)
				mu.Unlock()
				return nil
			}
			if err != nil {
				return fmt.Errorf("read record %d: %w", s, err)
			}
			if r.Seq != s || r.Volume != desc.ID {
				mu.Lock()
				rep.add(ProblemCorruptRecord, key, "record says it is seq %d of volume %s", r.Seq, r.Volume)
				mu.Unlock()
			}
			recs[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}

	// Snapshots: decode each, collect the records they reference.
	present := map[string]map[uint64]bool{desc.ID: {}}
	for _, s := range logSeqs {
		present[desc.ID][s] = true
	}
	rep.Base = 0
	for _, s := range snapSeqs {
		key := format.SnapKey(desc.ID, s)
		refs, err := p.snapshotRefs(ctx, desc, s)
		if errors.Is(err, format.ErrCorrupt) {
			rep.add(ProblemCorruptSnapshot, key, "%v", err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", name, err)
		}
		rep.Base = max(rep.Base, s)
		if err := p.checkRefs(ctx, rep, present, key, refs); err != nil {
			return nil, fmt.Errorf("verify %s: %w", name, err)
		}
	}

	// Gaps after the base: loss or crash leftovers.
	var marks []journal.Mark
	for i, s := range logSeqs {
		m := journal.Mark{Seq: s}
		if recs[i] != nil {
			m.Durable = recs[i].Durable
		}
		marks = append(marks, m)
	}
	for _, gap := range journal.Gaps(rep.Base, ^uint64(0), marks, snapSeqs) {
		if gap.Lost {
			rep.add(ProblemLogGap, format.LogKey(desc.ID, gap.First), "%v; the last consistent point is %s@%d", gap, name, gap.First-1)
		} else {
			rep.Leftovers = append(rep.Leftovers, gap)
		}
	}

	// Checkpoints: each decodes and has its snapshot.
	if err := p.verifyCheckpoints(ctx, rep, desc, snapSeqs); err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}

	// The head replays (a gap is reported above; a missing restore target,
	// a record of another volume, ... surface here).
	img, err := p.loadImage(ctx, desc, ^uint64(0))
	switch {
	case errors.Is(err, ErrLogGap):
		if !slices.ContainsFunc(rep.Problems, func(pr VerifyProblem) bool { return pr.Kind == ProblemLogGap }) {
			rep.add(ProblemLogGap, "", "%v", err)
		}
	case errors.Is(err, format.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound):
		rep.add(ProblemReplay, "", "%v", err)
	case err != nil:
		return nil, fmt.Errorf("verify %s: %w", name, err)
	default:
		rep.Head = img.st.Seq
	}

	if o.Deep {
		if err := p.verifyChunks(ctx, rep, desc, logSeqs, recs); err != nil {
			return nil, fmt.Errorf("verify %s: %w", name, err)
		}
	}
	sort.SliceStable(rep.Problems, func(i, j int) bool { return rep.Problems[i].Key < rep.Problems[j].Key })
	return rep, nil
}

// snapRef is a record a map references: (volume id, seq).
type snapRef struct {
	vol string
	seq uint64
}

// snapshotRefs decodes snapshot seq of desc and returns the records its
// map references.
func (p *Pool) snapshotRefs(ctx context.Context, desc *format.VolumeDesc, seq uint64) (map[snapRef]bool, error) {
	b, err := p.store.Get(ctx, format.SnapKey(desc.ID, seq))
	if err != nil {
		return nil, fmt.Errorf("read snapshot %d: %w", seq, err)
	}
	refs := map[snapRef]bool{}
	var vols []string
	h, err := format.DecodeSnapshot(b, func(x format.SnapExtent) error {
		if int(x.Vol) >= len(vols) {
			return fmt.Errorf("%w: extent references volume index %d of %d", format.ErrCorrupt, x.Vol, len(vols))
		}
		refs[snapRef{vols[x.Vol], x.Seq}] = true
		return nil
	}, func(h *format.SnapshotHeader) { vols = h.Vols })
	if err != nil {
		return nil, err
	}
	if h.Seq != seq || h.Volume != desc.ID || checkGrownSize(desc, h.Size) != nil {
		return nil, fmt.Errorf("%w: header says seq %d of volume %s, size %d", format.ErrCorrupt, h.Seq, h.Volume, h.Size)
	}
	return refs, nil
}

// checkRefs reports the records in refs that do not exist; present caches
// the log listings of the volumes consulted.
func (p *Pool) checkRefs(ctx context.Context, rep *VerifyReport, present map[string]map[uint64]bool, key string, refs map[snapRef]bool) error {
	var missing []string
	for ref := range refs {
		have, ok := present[ref.vol]
		if !ok {
			seqs, _, err := p.listSeqs(ctx, format.LogPrefix(ref.vol))
			if err != nil {
				return err
			}
			have = map[uint64]bool{}
			for _, s := range seqs {
				have[s] = true
			}
			present[ref.vol] = have
		}
		if !have[ref.seq] {
			what := "record %d of volume %s"
			if ref.vol == rep.ID {
				what = "record %d"
			}
			missing = append(missing, fmt.Sprintf(what, ref.seq, ref.vol))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		rep.add(ProblemDanglingSnapshot, key, "its map references %d missing record(s): %v", len(missing), missing)
	}
	return nil
}

// verifyCheckpoints checks that every checkpoint decodes and names a
// snapshot that exists.
func (p *Pool) verifyCheckpoints(ctx context.Context, rep *VerifyReport, desc *format.VolumeDesc, snapSeqs []uint64) error {
	prefix := format.CheckpointPrefix(desc.ID)
	var keys []string
	if err := p.store.List(ctx, prefix, func(oi objstore.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		return fmt.Errorf("list checkpoints: %w", err)
	}
	rep.Checkpoints = len(keys)
	for _, key := range keys {
		c, err := p.readCheckpointAt(ctx, key)
		if errors.Is(err, format.ErrCorrupt) {
			rep.add(ProblemCheckpoint, key, "%v", err)
			continue
		}
		if err != nil {
			return err
		}
		if !slices.Contains(snapSeqs, c.Seq) {
			rep.add(ProblemCheckpoint, key, "checkpoint %q names seq %d, but there is no snapshot there", c.Label, c.Seq)
		}
	}
	return nil
}

// verifyChunks reads every record with data whole and checks each frame.
func (p *Pool) verifyChunks(ctx context.Context, rep *VerifyReport, desc *format.VolumeDesc, logSeqs []uint64, recs []*format.Record) error {
	// Sealed frames are checked by opening them: that needs the key.
	dk, err := p.dataKey(ctx, desc)
	if err != nil {
		return fmt.Errorf("check chunks: %w", err)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4) // whole records (MiBs each) in memory at once
	for i, s := range logSeqs {
		r := recs[i]
		if r == nil || r.DataLen == 0 {
			continue // a corrupt trailer is reported already; nothing to read otherwise
		}
		g.Go(func() error {
			key := format.LogKey(desc.ID, s)
			b, err := p.store.Get(gctx, key)
			if err != nil {
				return fmt.Errorf("read record %d: %w", s, err)
			}
			n := 0
			var bad []string
			var ft format.FrameTable
			var out []byte
			if r.Frames != nil {
				ft, out = format.NewFrameTable(r.Frames), make([]byte, format.ChunkSize)
			}
			for c := uint64(0); c*format.ChunkSize < r.DataLen; c++ {
				pos, stride := format.FramePos(c), int64(format.FrameSize)
				switch {
				case r.Frames != nil:
					pos, stride = int64(ft.Off[c]), int64(ft.Off[c+1]-ft.Off[c])
				case r.Sealed:
					pos, stride = format.SealedFramePos(c), format.SealedFrameSize
				}
				if pos >= int64(len(b)) {
					bad = append(bad, fmt.Sprintf("chunk %d: beyond the object", c))
					break
				}
				frame := b[pos:min(int64(len(b)), pos+stride)]
				var err error
				switch {
				case r.Sealed && dk == nil:
					err = fmt.Errorf("%w: sealed record in an unencrypted volume", format.ErrCorrupt)
				case r.Frames != nil && r.Sealed != (dk != nil):
					err = fmt.Errorf("%w: packed record sealed=%v in a volume with encryption=%v", format.ErrCorrupt, r.Sealed, dk != nil)
				case r.Frames != nil:
					var data []byte
					if data, err = format.OpenPacked(frame, dk, desc.ID, s, c, out); err == nil && len(data) != format.ChunkLen(r.DataLen, c) {
						err = fmt.Errorf("%w: packed frame holds %d bytes, expected %d", format.ErrCorrupt, len(data), format.ChunkLen(r.DataLen, c))
					}
				case r.Sealed:
					_, err = dk.OpenFrame(frame, desc.ID, s, c, format.ChunkLen(r.DataLen, c))
				case dk != nil:
					// A plaintext record in an encrypted volume was never
					// written by urldisk: its bytes would bypass the key.
					err = fmt.Errorf("%w: unsealed record in an encrypted volume", format.ErrCorrupt)
				default:
					_, err = format.DecodeFrame(frame, format.ChunkLen(r.DataLen, c))
				}
				if err != nil {
					bad = append(bad, fmt.Sprintf("chunk %d: %v", c, err))
				}
				n++
			}
			mu.Lock()
			defer mu.Unlock()
			rep.ChunksChecked += n
			if len(bad) > 0 {
				rep.add(ProblemCorruptRecord, key, "%d bad chunk(s): %v", len(bad), bad)
			}
			return nil
		})
	}
	return g.Wait()
}
