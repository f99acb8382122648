package volume

import (
	"errors"
	"fmt"

	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/volref"
)

var (
	// ErrNoPool: the URL holds no urldisk pool (run `urldisk pool init`).
	ErrNoPool = errors.New("no urldisk pool at this URL")
	// ErrNotFound: no volume of that name in the pool.
	ErrNotFound = errors.New("volume not found")
	// ErrExists: a volume of that name already exists.
	ErrExists = errors.New("volume already exists")
	// ErrNoConditionalCreate: the pool's store does not honour
	// create-if-absent, so a single writer cannot be guaranteed.
	ErrNoConditionalCreate = errors.New("object store does not support conditional create; read-write attach refused")
	// ErrInvalid: bad arguments (size, block size, name). It is
	// volref.ErrInvalid, so a bad point or label is the same mistake
	// whether the URL parser or the engine finds it.
	ErrInvalid = volref.ErrInvalid
	// ErrLogGap: records a replay needs are missing from the volume's log,
	// and later records or snapshots prove they were acknowledged (deleted,
	// or lost by the store). Opening past them would silently roll the
	// volume back; errors.As a *GapError for the details.
	ErrLogGap = errors.New("acknowledged log records are missing")
)

// GapError is the ErrLogGap an open of a volume fails with.
type GapError struct {
	Volume string
	Gap    journal.Gap // the missing seqs and what proves they were acknowledged
	Base   uint64      // the snapshot replay started from
	snaps  []uint64    // the snapshots replay knew of (loadImage retries if GC added one)
}

func (e *GapError) Error() string {
	return fmt.Sprintf("volume %s: %v; refusing to open it past seq %d, which would silently roll it back "+
		"(and a read-write attach would void the records after the gap for good). "+
		"Run `urldisk verify` on the volume; its last consistent point is %s@%d (open that --read-only)",
		e.Volume, e.Gap, e.Gap.First-1, e.Volume, e.Gap.First-1)
}

// Is makes errors.Is(err, ErrLogGap) true.
func (e *GapError) Is(target error) bool { return target == ErrLogGap }
