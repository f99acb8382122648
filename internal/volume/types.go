package volume

import (
	"fmt"
	"time"

	"github.com/urldisk/urldisk/internal/format"
)

// Checkpoint is a named, immutable point of a volume: label → log seq. It
// is the API's view of a checkpoint; the stored document is
// format.CheckpointDoc, which callers outside this package never see, so the
// on-disk format can change without touching them.
type Checkpoint struct {
	Label string    `json:"label"`
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
}

func checkpointOf(d *format.CheckpointDoc) *Checkpoint {
	return &Checkpoint{Label: d.Label, Seq: d.Seq, Time: d.Time}
}

// Policy is a volume's automatic-checkpoint policy (Pool.SetPolicy). The
// zero Policy is off.
type Policy struct {
	// Every: take a checkpoint this often while the volume is written;
	// whole seconds, 0 for off.
	Every time.Duration `json:"every"`
	// KeepHourly: keep the newest automatic checkpoint of each of this many
	// most recent hours; KeepDaily: and of each of this many recent days.
	KeepHourly int `json:"keep_hourly"`
	KeepDaily  int `json:"keep_daily"`
}

// Off reports whether the policy takes no automatic checkpoints.
func (p Policy) Off() bool { return p.Every == 0 }

// validate refuses what the stored document cannot say or what would
// delete every automatic checkpoint.
func (p Policy) validate() error {
	switch {
	case p.Every < 0 || p.KeepHourly < 0 || p.KeepDaily < 0:
		return fmt.Errorf("%w: policy values must not be negative", ErrInvalid)
	case p.Every%time.Second != 0:
		return fmt.Errorf("%w: policy interval %v is not a whole number of seconds", ErrInvalid, p.Every)
	case p.Every > 0 && p.KeepHourly == 0 && p.KeepDaily == 0:
		return fmt.Errorf("%w: a policy that keeps nothing would delete every automatic checkpoint", ErrInvalid)
	}
	return nil
}

func (p Policy) doc() format.CheckpointPolicy {
	return format.CheckpointPolicy{EverySeconds: int64(p.Every / time.Second), KeepHourly: p.KeepHourly, KeepDaily: p.KeepDaily}
}

func policyOf(d format.CheckpointPolicy) Policy {
	return Policy{Every: time.Duration(d.EverySeconds) * time.Second, KeepHourly: d.KeepHourly, KeepDaily: d.KeepDaily}
}

// notFoundError is an ErrNotFound naming what is missing, so the message
// says "not found" once and says what: `volume not found: "web-1"`,
// `checkpoint not found: "nightly"` (wrapping ErrNotFound with a prefix
// read `volume "web-1": volume not found`, and called a missing checkpoint
// a missing volume).
type notFoundError struct{ what, name string }

func notFound(what, name string) error { return &notFoundError{what, name} }

func (e *notFoundError) Error() string { return fmt.Sprintf("%s not found: %q", e.what, e.name) }

func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }

// Desc describes a volume: name, id, size, block size, parent, creation
// time. It is the stored volume.json document for now, under a name of
// this package so that callers need not import format and the two can
// part later.
type Desc = format.VolumeDesc
