package volume

import (
	"context"
	"encoding/json"
	"time"

	"github.com/urldisk/urldisk/internal/format"
)

// Info describes a volume as `urldisk info` shows it.
type Info struct {
	Name      string            `json:"name"`
	ID        string            `json:"id"`
	Size      uint64            `json:"size"`
	BlockSize uint32            `json:"block_size"`
	Created   time.Time         `json:"created"`
	Parent    *format.ParentRef `json:"parent,omitempty"`
	// Lineage lists the ancestors, nearest first.
	Lineage []Ancestor `json:"lineage,omitempty"`
	// UsedBytes is the bytes mapped by the head extent map (what reads
	// would return as non-zero-holes).
	UsedBytes uint64 `json:"used_bytes"`
	Extents   int    `json:"extents"`
	// Records and StoredBytes count the log objects present.
	Records     int   `json:"records"`
	StoredBytes int64 `json:"stored_bytes"`
	// LogicalBytes is the data those records hold (their size less the
	// frames' headers and, encrypted, nonces and tags).
	LogicalBytes int64 `json:"logical_bytes"`
	// Encrypted: the volume's records are sealed; KeyFingerprint names the
	// key-encryption key its data key is wrapped by.
	Encrypted      bool   `json:"encrypted"`
	KeyFingerprint string `json:"key_fingerprint,omitempty"`
	// Compression is the volume's record compression ("lz4"), "" if none.
	Compression string `json:"compression,omitempty"`
	FirstSeq    uint64 `json:"first_seq"`
	HeadSeq     uint64 `json:"head_seq"`
	Epoch       uint64 `json:"epoch"`
	// Writer is the holder of the current epoch, from its fence record.
	Writer      *WriterInfo `json:"writer,omitempty"`
	Snapshots   int         `json:"snapshots"`
	SnapSeq     uint64      `json:"snapshot_seq"`
	LastWrite   time.Time   `json:"last_write"`
	Conditional bool        `json:"conditional_create"`
}

// Ancestor is one step of a clone's lineage.
type Ancestor struct {
	ID   string `json:"id"`
	Name string `json:"name"` // name at creation
	Seq  uint64 `json:"seq"`  // the point the child was cloned from
	Gone bool   `json:"gone,omitempty"`
}

// WriterInfo says who attached read-write last.
type WriterInfo struct {
	ID       string    `json:"id"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Attached time.Time `json:"attached"`
	// Running: whether that process still runs, when this host can tell
	// (it is this host's); nil when the writer is on another host. The log
	// records no detach, so a writer that closed (an import, a stopped
	// serve) still owns the epoch until the next one fences it.
	Running *bool `json:"running,omitempty"`
}

// loadHead resolves name and replays its log to the durable head without
// attaching: what the offline readers (Info, Pool.Checkpoint) start from.
func (p *Pool) loadHead(ctx context.Context, name string) (*format.VolumeDesc, *image, error) {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	img, err := p.loadImage(ctx, d, ^uint64(0))
	if err != nil {
		return nil, nil, err
	}
	return d, img, nil
}

// Info replays the named volume (without attaching) and describes it.
func (p *Pool) Info(ctx context.Context, name string) (*Info, error) {
	d, img, err := p.loadHead(ctx, name)
	if err != nil {
		return nil, err
	}
	seqs, sizes, err := p.listSeqs(ctx, format.LogPrefix(d.ID))
	if err != nil {
		return nil, err
	}
	img.records, img.recordBytes = len(seqs), 0
	for _, s := range seqs {
		img.recordBytes += sizes[s]
	}
	logical, err := p.logicalLogBytes(ctx, d.ID, d, sizes)
	if err != nil {
		return nil, err
	}
	if len(seqs) > 0 {
		img.firstLogSeq = seqs[0]
	}
	in := &Info{
		Name: d.Name, ID: d.ID, Size: img.size, BlockSize: d.BlockSize, Created: d.Created, Parent: d.Parent,
		UsedBytes: img.m.MappedBytes(), Extents: img.m.Len(), Records: img.records, StoredBytes: img.recordBytes,
		FirstSeq: img.firstLogSeq, HeadSeq: img.st.Seq, Epoch: img.st.Epoch, Snapshots: img.snapshots, SnapSeq: img.snapSeq,
		Conditional: p.marker.ConditionalCreate, LogicalBytes: logical, Compression: d.Compression,
	}
	if d.Encryption != nil {
		in.Encrypted, in.KeyFingerprint = true, d.Encryption.KeyFingerprint
	}
	for ref := d.Parent; ref != nil && len(in.Lineage) < 64; {
		a := Ancestor{ID: ref.ID, Seq: ref.Seq}
		pd, err := p.descriptor(ctx, ref.ID)
		if err != nil {
			a.Gone = true
			in.Lineage = append(in.Lineage, a)
			break
		}
		a.Name = pd.Name
		in.Lineage = append(in.Lineage, a)
		ref = pd.Parent
	}
	if img.lastTime != 0 {
		in.LastWrite = time.Unix(0, img.lastTime).UTC()
	}
	if img.st.Epoch > 0 {
		wi := &WriterInfo{ID: img.st.Writer.String()}
		if img.fenceMeta == nil && img.fenceSeq > 0 {
			if r, err := p.readRecordAt(ctx, d.ID, img.fenceSeq); err == nil {
				img.fenceMeta = r.Meta
			}
		}
		var fm fenceMeta
		if json.Unmarshal(img.fenceMeta, &fm) == nil {
			wi.Host, wi.PID, wi.Attached = fm.Host, fm.PID, fm.Time
			if running, known := writerRunning(fm.Host, fm.PID, fm.Time); known {
				wi.Running = &running
			}
		}
		in.Writer = wi
	}
	return in, nil
}
