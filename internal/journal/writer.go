package journal

import (
	"fmt"

	"github.com/urldisk/urldisk/internal/format"
)

// SegID names a sealed segment of writes, in the order the writer sealed them.
type SegID uint64

// Move tells the driver that segment Seg, which held slot From, must be
// written again at slot To (its map entries relocated from From to To).
type Move struct {
	Seg      SegID
	From, To uint64
}

type slotState uint8

const (
	slotPending slotState = iota // create issued, outcome unknown
	slotLanded                   // our record is there
	slotVoided                   // someone else's void record is there; segment moved
	slotLost                     // moved away from while pending; any outcome is fine
)

type slot struct {
	seg   SegID
	state slotState
}

// Writer is the state machine of one read-write attach, from the moment its
// fence landed. It is not safe for concurrent use.
type Writer struct {
	epoch uint64
	id    format.WriterID

	// Invariant: slots holds every slot in (prefix, next); every seq below
	// next was assigned exactly once and keeps being retried until resolved.
	slots  map[uint64]*slot
	next   uint64 // next sequence number to assign
	prefix uint64 // every slot <= prefix is resolved (landed or voided)

	// cur maps a segment to its current slot; deleted once durable.
	cur    map[SegID]uint64
	fenced bool
	// durableSeg: every segment <= durableSeg is durable (0: none yet).
	durableSeg SegID
	lastSeg    SegID
}

// NewWriter starts a writer that owns epoch with its fence at fenceSeq.
func NewWriter(epoch uint64, id format.WriterID, fenceSeq uint64) *Writer {
	return &Writer{epoch: epoch, id: id, slots: map[uint64]*slot{}, next: fenceSeq + 1, prefix: fenceSeq, cur: map[SegID]uint64{}}
}

// Epoch returns the writer's epoch.
func (w *Writer) Epoch() uint64 { return w.epoch }

// ID returns the writer's id.
func (w *Writer) ID() format.WriterID { return w.id }

// Fenced reports whether the writer learned it was fenced.
func (w *Writer) Fenced() bool { return w.fenced }

// Prefix returns the highest seq such that every slot up to it is resolved.
func (w *Writer) Prefix() uint64 { return w.prefix }

// Next returns the next sequence number Assign will use.
func (w *Writer) Next() uint64 { return w.next }

// DurableSeg returns the highest segment such that it and every earlier
// segment are durable, or 0.
func (w *Writer) DurableSeg() SegID { return w.durableSeg }

// Assign gives the next slot to segment seg, which must be newer than every
// segment assigned before.
func (w *Writer) Assign(seg SegID) (uint64, error) {
	if w.fenced {
		return 0, fmt.Errorf("assign segment %d: writer fenced", seg)
	}
	if seg <= w.lastSeg {
		return 0, fmt.Errorf("assign segment %d: not after segment %d", seg, w.lastSeg)
	}
	w.lastSeg = seg
	seq := w.next
	w.next++
	w.slots[seq] = &slot{seg: seg}
	w.cur[seg] = seq
	return seq, nil
}

// SlotOf returns the current slot of a not-yet-durable segment.
func (w *Writer) SlotOf(seg SegID) (uint64, bool) {
	s, ok := w.cur[seg]
	return s, ok
}

// Landed records that the create of slot seq succeeded.
func (w *Writer) Landed(seq uint64) {
	s, ok := w.slots[seq]
	if !ok || s.state != slotPending && s.state != slotLost {
		return
	}
	if s.state == slotPending {
		s.state = slotLanded
	} else {
		s.state = slotVoided // resolved; the segment lives elsewhere now
	}
	w.advance()
}

// Taken records that slot seq was found holding r. It returns the moves the
// driver must perform (segments to rewrite at new slots, in order), or
// marks the writer fenced.
func (w *Writer) Taken(seq uint64, r *format.Record) ([]Move, Judgement) {
	s, ok := w.slots[seq]
	if !ok {
		return nil, Mine // already resolved earlier (duplicate outcome)
	}
	j := Judge(w.epoch, w.id, seq, r)
	switch j {
	case Mine:
		w.Landed(seq)
		return nil, Mine
	case Fenced:
		w.fenced = true
		return nil, Fenced
	}
	// Skip: a void record holds the slot. Whatever we had there is lost.
	wasPending := s.state == slotPending
	s.state = slotVoided
	var moves []Move
	if wasPending && !w.fenced {
		moves = w.moveFrom(s.seg, seq)
	}
	w.advance()
	return moves, Skip
}

// moveFrom reassigns segment seg (whose slot from was lost) and every later
// segment whose current slot is after from, preserving their order, so the
// log still applies them oldest first.
func (w *Writer) moveFrom(seg SegID, from uint64) []Move {
	var segs []SegID
	for sg, sq := range w.cur {
		if sg >= seg && sq >= from {
			segs = append(segs, sg)
		}
	}
	sortSegs(segs)
	moves := make([]Move, 0, len(segs))
	for _, sg := range segs {
		old := w.cur[sg]
		if os := w.slots[old]; os != nil && os.state == slotPending {
			os.state = slotLost
		}
		to := w.next
		w.next++
		w.slots[to] = &slot{seg: sg}
		w.cur[sg] = to
		moves = append(moves, Move{Seg: sg, From: old, To: to})
	}
	return moves
}

func sortSegs(s []SegID) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// advance moves the resolved prefix and the durable segment forward.
func (w *Writer) advance() {
	for {
		s, ok := w.slots[w.prefix+1]
		if !ok || s.state == slotPending || s.state == slotLost {
			break
		}
		w.prefix++
		delete(w.slots, w.prefix)
	}
	if w.fenced {
		return
	}
	for {
		nextSeg := w.durableSeg + 1
		sq, ok := w.cur[nextSeg]
		if !ok {
			// Segment ids need not be dense: find the smallest pending one.
			min := SegID(0)
			for sg := range w.cur {
				if min == 0 || sg < min {
					min = sg
				}
			}
			if min == 0 {
				w.durableSeg = w.lastSeg
				return
			}
			w.durableSeg = min - 1
			nextSeg, sq = min, w.cur[min]
		}
		if sq > w.prefix {
			return
		}
		delete(w.cur, nextSeg)
		w.durableSeg = nextSeg
	}
}
