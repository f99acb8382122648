package format

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Documents are JSON in a one-line text envelope
//
//	urldisk-<kind> v1 crc32c=<8 hex digits>\n<json>
//
// so they stay readable with `cat` and still carry magic, version and checksum.

// Document kinds.
const (
	KindPool       = "pool"
	KindVolume     = "volume"
	KindName       = "name"
	KindCheckpoint = "checkpoint"
	KindPolicy     = "policy"
)

// CheckpointPolicy is <pool>/vols/<id>/policy: automatic checkpoints.
type CheckpointPolicy struct {
	// EverySeconds: take a checkpoint this often while the volume is
	// written (0: off).
	EverySeconds int64 `json:"every_seconds"`
	// KeepHourly: keep the newest automatic checkpoint of each of this
	// many most recent hours.
	KeepHourly int `json:"keep_hourly"`
	// KeepDaily: and of each of this many most recent days.
	KeepDaily int `json:"keep_daily"`
}

// PoolMarker is <pool>/urldisk-pool.json.
type PoolMarker struct {
	Created time.Time `json:"created"`
	// ConditionalCreate records whether the store honoured create-if-absent
	// when the pool was initialised; read-write attach requires it.
	ConditionalCreate bool `json:"conditional_create"`
}

// ParentRef names the point of another volume a clone starts from.
type ParentRef struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
}

// VolumeDesc is <pool>/vols/<id>/volume.json.
type VolumeDesc struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Size      uint64     `json:"size"`
	BlockSize uint32     `json:"block_size"`
	Created   time.Time  `json:"created"`
	Parent    *ParentRef `json:"parent,omitempty"`
	// Encryption, if set: the volume's records are sealed with the
	// lineage's data key, wrapped here (FORMAT.md "Encryption"). Binaries
	// that do not know the field refuse the descriptor (unknown fields are
	// rejected), so they never misread an encrypted volume.
	Encryption *EncryptionDesc `json:"encryption,omitempty"`
	// Compression, if set (CompressLZ4), makes the volume write packed
	// records (FORMAT.md "Compression"); clones inherit it. Binaries that
	// do not know the field refuse the descriptor, as for Encryption.
	Compression string `json:"compression,omitempty"`
}

// Validate checks a descriptor's fields.
func (v *VolumeDesc) Validate() error {
	switch {
	case v.ID == "" || len(v.ID) > maxIDLen:
		return corruptf("volume descriptor: bad id")
	case v.BlockSize < 512 || v.BlockSize > 1<<20 || v.BlockSize&(v.BlockSize-1) != 0:
		return corruptf("volume descriptor: block size %d not a power of two in [512, 1MiB]", v.BlockSize)
	case v.Size == 0 || v.Size%uint64(v.BlockSize) != 0:
		return corruptf("volume descriptor: size %d not a positive multiple of block size", v.Size)
	}
	if v.Compression != "" && v.Compression != CompressLZ4 {
		return corruptf("volume descriptor: compression %q not supported (this urldisk knows %s)", v.Compression, CompressLZ4)
	}
	if v.Encryption != nil {
		return v.Encryption.Validate()
	}
	return nil
}

// NameBinding is <pool>/names/<name>: the volume id a name points to.
type NameBinding struct {
	ID string `json:"id"`
}

// CheckpointDoc is <pool>/vols/<id>/ckpt/<label>.
type CheckpointDoc struct {
	Label string    `json:"label"`
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
}

// EncodeDoc returns v as a checksummed document of the given kind.
func EncodeDoc(kind string, v any) ([]byte, error) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s document: %w", kind, err)
	}
	body = append(body, '\n')
	head := fmt.Sprintf("urldisk-%s v%d crc32c=%08x\n", kind, Version, Checksum(body))
	return append([]byte(head), body...), nil
}

// DecodeDoc verifies a document of the given kind and unmarshals it into v.
func DecodeDoc(kind string, b []byte, v any) error {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 || nl > 100 {
		return corruptf("%s document: missing header line", kind)
	}
	var gotKind string
	var ver int
	var sum uint32
	if _, err := fmt.Sscanf(string(b[:nl]), "urldisk-%s v%d crc32c=%x", &gotKind, &ver, &sum); err != nil {
		return corruptf("%s document: bad header line", kind)
	}
	if gotKind != kind {
		return corruptf("expected a %s document, found %q", kind, gotKind)
	}
	if ver != Version {
		return corruptf("%s document: format version %d not supported", kind, ver)
	}
	body := b[nl+1:]
	if Checksum(body) != sum {
		return corruptf("%s document: checksum mismatch", kind)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return corruptf("%s document: %v", kind, err)
	}
	return nil
}
