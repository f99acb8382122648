// Package journal is the pure core of urldisk's log and fencing protocol
// (DESIGN.md §5): how replay treats each record, and the writer's state
// machine that assigns sequence numbers to sealed segments, judges the
// outcome of every create-if-absent, moves segments whose slot a fenced
// writer's leftover took, and decides which segments are durable.
//
// It does no I/O, starts no goroutines and reads no clock: the volume engine
// drives it, and the deterministic simulation in this package's tests drives
// many of them against a simulated store with injected faults.
package journal

import (
	"fmt"

	"github.com/urldisk/urldisk/internal/format"
)

// State is what replay knows after applying the log up to Seq.
type State struct {
	Seq    uint64          // last replayed sequence number
	Epoch  uint64          // current epoch
	Writer format.WriterID // writer that owns Epoch
}

// Verdict says what replay does with a record.
type Verdict int

const (
	// Apply: a data or restore record of the current epoch's writer.
	Apply Verdict = iota
	// Void: a leftover of a fenced writer (or a stale fence); skipped.
	Void
	// Fence: a fence that starts a new epoch.
	Fence
)

func (v Verdict) String() string {
	return [...]string{"apply", "void", "fence"}[v]
}

// Replay applies record r (which must be the record at st.Seq+1) to the
// replay state and says what to do with its contents.
func Replay(st State, r *format.Record) (State, Verdict, error) {
	if r.Seq != st.Seq+1 {
		return st, Void, fmt.Errorf("replay: record %d after %d: log out of order", r.Seq, st.Seq)
	}
	st.Seq = r.Seq
	switch r.Type {
	case format.RecordFence:
		if r.Epoch > st.Epoch {
			st.Epoch, st.Writer = r.Epoch, r.Writer
			return st, Fence, nil
		}
		return st, Void, nil
	case format.RecordData, format.RecordRestore, format.RecordResize:
		if r.Epoch == st.Epoch && r.Writer == st.Writer {
			return st, Apply, nil
		}
		return st, Void, nil
	}
	return st, Void, fmt.Errorf("replay: record %d has unknown type %v", r.Seq, r.Type)
}

// Judgement is a writer's reading of a record found in a slot it tried to create.
type Judgement int

const (
	// Mine: the record is this writer's own (a retry after a lost response).
	Mine Judgement = iota
	// Skip: a void leftover of an older epoch; the writer moves on.
	Skip
	// Fenced: another writer owns the volume now.
	Fenced
)

func (j Judgement) String() string { return [...]string{"mine", "skip", "fenced"}[j] }

// Judge decides what a writer of (epoch, id) does about record r found in
// slot seq when its create-if-absent reported that the slot was taken.
func Judge(epoch uint64, id format.WriterID, seq uint64, r *format.Record) Judgement {
	switch {
	case r.Seq != seq:
		// A record in the wrong slot is corruption; never trust the volume further.
		return Fenced
	case r.Writer == id && r.Epoch == epoch:
		return Mine
	case r.Type != format.RecordFence && r.Epoch < epoch:
		return Skip
	default:
		// A fence (it can only be newer: whoever created it replayed ours),
		// or a record of a newer epoch.
		return Fenced
	}
}
