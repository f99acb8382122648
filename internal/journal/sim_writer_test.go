package journal

import (
	"encoding/binary"
	"fmt"
	"maps"

	"github.com/urldisk/urldisk/internal/format"
)

type simPhase uint8

const (
	phAttach  simPhase = iota // replaying and creating its fence
	phWrite                   // owns an epoch (until it learns it is fenced)
	phDone                    // sealed its budget, everything acknowledged; detached
	phCrashed                 // gone; some of its requests may still fly
)

type slotStateSim uint8

const (
	slotPendingSim slotStateSim = iota // create issued, outcome unknown
	slotOursSim                        // our record is there (possibly a stale copy of a moved segment)
	slotVoidSim                        // someone else's void record is there
	slotFenceSim                       // a newer writer's record: we are fenced
	slotGivenUp                        // fenced: we stopped retrying
)

// simSlot is the driver's knowledge of one slot the writer was assigned.
type simSlot struct {
	seq   uint64
	seg   *simSeg
	obj   []byte // the record this writer creates there
	op    uint64 // current request; responses to older ones are ignored
	state slotStateSim
}

// simSeg is a sealed segment: a set of block writes with unique values.
type simSeg struct {
	id      SegID
	writes  []simWrite
	exts    []format.Extent
	meta    []byte
	obj     []byte // the first encoding, resealed at each new slot
	dataLen uint64
	slot    uint64 // current slot, as the driver tracks it from Assign and Moves
	time    int64  // the record's Time, set at sealing (a move reseals with it unchanged)
	durable uint64 // the journal's resolved prefix at sealing: the record's watermark (unchanged by a move)
}

type simWriter struct {
	idx       int // index among all writers of all volumes
	vol       *simVol
	id        format.WriterID
	phase     simPhase
	holdUntil int
	budget    int

	// attach
	loaded     bool // replay started (from the newest snapshot)
	st         State
	view       map[uint64]simCell
	fenceSeq   uint64
	fenceEpoch uint64
	fenceObj   []byte
	fenceTime  int64
	op         uint64 // current attach request
	// lastTime: the newest time of the non-void records replayed, then of
	// the writer's own records: record times never go back (a writer
	// clamps to max(now, lastTime+1)).
	lastTime int64

	// write
	w        *Writer
	base     map[uint64]simCell // map at fenceSeq
	slots    map[uint64]*simSlot
	segs     []*simSeg // in sealing order
	byID     map[SegID]*simSeg
	acked    int     // segs[:acked] are acknowledged
	flushes  []SegID // issued, not yet acknowledged
	flushed  SegID   // highest segment a flush was issued for
	ackedTo  SegID   // every segment <= ackedTo is acknowledged
	durable  SegID   // last DurableSeg seen
	fenced   bool
	fencedAt SegID // DurableSeg when it learned it was fenced
}

func (w *simWriter) isLive() bool {
	return w.phase == phAttach || w.phase == phWrite && !w.fenced
}

// startWriter begins a new attach to v: load the newest snapshot, replay, fence.
func (s *sim) startWriter(v *simVol) {
	w := &simWriter{idx: len(s.writers), vol: v, phase: phAttach}
	if w.idx+1 >= simRogue {
		panic("too many writers")
	}
	w.id[0] = byte(w.idx + 1)
	for i := 1; i < len(w.id); i++ {
		w.id[i] = byte(s.rng.Uint32())
	}
	w.budget = s.p.minBudget + s.rng.IntN(s.p.maxBudget-s.p.minBudget+1)
	s.writers = append(s.writers, w)
	v.writers = append(v.writers, w)
	v.started++
	v.startNext = s.rng.IntN(w.budget + 1)
	s.tracef("start w%d on %s (id %x, budget %d)", w.idx, v.id, w.id[:4], w.budget)
	w.op = s.send(w, opReplay, 0, nil)
}

// attachReplayed: the attacher (re)reads the store: the first time from the
// newest snapshot, later (after its fence slot was taken) from where it
// stopped, up to the first gap. Then it tries to create its fence.
func (s *sim) attachReplayed(w *simWriter, res simOutcome) {
	if res != resOK {
		w.op = s.send(w, opReplay, 0, nil)
		return
	}
	v := w.vol
	if !w.loaded {
		w.loaded = true
		w.view = map[uint64]simCell{}
		if sn := v.store.newest(); sn != nil {
			w.st, w.view, w.lastTime = sn.st, maps.Clone(sn.cells), sn.time
			if sn.seq > 0 {
				s.stats.attachFromSnap++
			}
			s.tracef("w%d loads snapshot %d", w.idx, sn.seq)
		} else if v.parent != nil {
			s.failf("w%d: clone %s has no snapshot to attach from", w.idx, v.id)
			return
		}
	}
	for {
		seq := w.st.Seq + 1
		obj, ok := v.store.get(seq, false)
		if !ok {
			break
		}
		r, err := s.decoded(v, seq, obj)
		if err != nil {
			s.failf("w%d replay: record %d: %v", w.idx, seq, err)
			return
		}
		if w.fenceEpoch != 0 && seq == w.fenceSeq && Judge(w.fenceEpoch, w.id, seq, r.r) == Mine {
			// Our own fence, whose create's response was lost.
			s.stats.mineAfterLost++
			s.becomeWriter(w)
			return
		}
		var vd Verdict
		w.st, vd, err = Replay(w.st, r.r)
		if err != nil {
			s.failf("w%d replay: %v", w.idx, err)
			return
		}
		if vd != Void {
			w.lastTime = max(w.lastTime, r.r.Time) // void leftovers carry stale clocks
		}
		if vd == Apply {
			applyCells(w.view, v.idx, seq, r)
		}
	}
	if w.fenceEpoch != 0 {
		s.stats.fenceRetries++
	}
	w.fenceSeq, w.fenceEpoch = w.st.Seq+1, w.st.Epoch+1
	meta := fmt.Appendf(nil, `{"w":%d}`, w.idx)
	w.fenceTime = max(int64(s.step), w.lastTime+1)
	obj, err := format.EncodeRecord(&format.Record{Type: format.RecordFence, Seq: w.fenceSeq, Epoch: w.fenceEpoch, Writer: w.id, Volume: v.id, Time: w.fenceTime, Durable: w.st.Seq, Meta: meta}, nil)
	if err != nil {
		s.failf("encode fence: %v", err)
		return
	}
	s.tracef("w%d replayed to %d (epoch %d); fence %d epoch %d", w.idx, w.st.Seq, w.st.Epoch, w.fenceSeq, w.fenceEpoch)
	w.fenceObj = obj
	w.op = s.send(w, opCreate, w.fenceSeq, obj)
}

func (s *sim) fenceCreated(w *simWriter, res simOutcome) {
	switch res {
	case resOK:
		s.becomeWriter(w)
	case resExists:
		// Taken: replay further (the record there may be our own) and retry.
		w.op = s.send(w, opReplay, 0, nil)
	default: // failed, or the response was lost: retry the same create
		w.op = s.send(w, opCreate, w.fenceSeq, w.fenceObj)
	}
}

// becomeWriter: the fence landed; w owns fenceEpoch from fenceSeq.
func (s *sim) becomeWriter(w *simWriter) {
	w.phase, w.op = phWrite, 0
	w.lastTime = w.fenceTime
	w.w = NewWriter(w.fenceEpoch, w.id, w.fenceSeq)
	w.base = w.view
	w.view = nil
	w.slots = map[uint64]*simSlot{}
	w.byID = map[SegID]*simSeg{}
	w.vol.attaches++
	s.stats.attaches++
	if w.vol.parent != nil {
		s.stats.cloneAttaches++
	}
	s.tracef("w%d owns epoch %d of %s from fence %d", w.idx, w.fenceEpoch, w.vol.id, w.fenceSeq)
	// The attacher's replay must agree with a replay of everything from
	// scratch, and every invariant must hold for what it sees.
	want, err := s.oracle(w.vol, w.fenceSeq-1)
	if err != nil {
		s.failf("attach w%d: oracle replay: %v", w.idx, err)
		return
	}
	if want.st != w.st || !cellsEqual(want.cells, w.base) {
		s.failf("attach w%d: its replay (state %+v) disagrees with a replay from scratch (state %+v): %s", w.idx, w.st, want.st, cellsDiff(want.cells, w.base))
		return
	}
	s.checkAll(w.vol, fmt.Sprintf("after w%d attached", w.idx))
}

// writerAction: a random live writer seals a segment or issues a flush.
func (s *sim) writerAction() bool {
	var cand []*simWriter
	for _, w := range s.writers {
		if w.phase == phWrite && !w.fenced && (s.canSeal(w) || w.flushed < w.lastID()) {
			cand = append(cand, w)
		}
	}
	if len(cand) == 0 {
		return false
	}
	w := cand[s.rng.IntN(len(cand))]
	last := w.lastID()
	if s.canSeal(w) && (w.flushed == last || s.rng.Float64() >= s.p.pFlush) {
		s.seal(w)
	} else {
		s.flush(w, last)
	}
	return true
}

func (s *sim) canSeal(w *simWriter) bool {
	if len(w.segs) >= w.budget {
		return false
	}
	inflight := 0
	for i := len(w.segs) - 1; i >= 0 && w.segs[i].id > w.durable; i-- {
		inflight++
	}
	return inflight < s.p.depth
}

func (w *simWriter) lastID() SegID {
	if len(w.segs) == 0 {
		return 0
	}
	return w.segs[len(w.segs)-1].id
}

func (s *sim) flush(w *simWriter, x SegID) {
	w.flushed = x
	w.flushes = append(w.flushes, x)
	s.tracef("w%d flush %d", w.idx, x)
	s.afterOutcome(w)
}

func (s *sim) seal(w *simWriter) {
	// Segment ids increase, densely or (in some seeds) with holes.
	id := w.lastID() + 1 + SegID(s.rng.IntN(s.p.segStride))
	k := 1 + s.rng.IntN(s.p.segBlocks)
	blocks := s.rng.Perm(s.p.blocks)[:k]
	b := format.NewBuilder(k * simBlock)
	w.lastTime = max(int64(s.step), w.lastTime+1)
	seg := &simSeg{id: id, meta: fmt.Appendf(nil, `{"w":%d,"seg":%d}`, w.idx, id), time: w.lastTime, durable: w.w.Prefix()}
	for i, blk := range blocks {
		wr := simWrite{block: uint64(blk)}
		x := format.Extent{Off: wr.block * simBlock, Len: simBlock}
		if s.rng.Float64() < s.p.pZero {
			wr.zero, x.Zero = true, true
		} else {
			wr.val = uint64(w.idx+1)<<48 | uint64(id)<<16 | uint64(i+1)
			x.DataOff = b.Append(binary.LittleEndian.AppendUint64(nil, wr.val))
		}
		seg.writes = append(seg.writes, wr)
		seg.exts = append(seg.exts, x)
	}
	seq, err := w.w.Assign(id)
	if err != nil {
		s.failf("w%d assign segment %d: %v", w.idx, id, err)
		return
	}
	r := s.dataRecord(w, seg, seq)
	obj, err := format.EncodeRecord(r, b)
	if err != nil {
		s.failf("encode: %v", err)
		return
	}
	seg.obj, seg.dataLen, seg.slot = obj, r.DataLen, seq
	w.segs = append(w.segs, seg)
	w.byID[id] = seg
	s.stats.segments++
	s.tracef("w%d seals segment %d (%d blocks) -> slot %d", w.idx, id, k, seq)
	s.newSlot(w, seq, seg, obj)
}

func (s *sim) dataRecord(w *simWriter, seg *simSeg, seq uint64) *format.Record {
	return &format.Record{Type: format.RecordData, Seq: seq, Epoch: w.w.Epoch(), Writer: w.id, Volume: w.vol.id,
		Time: seg.time, Durable: seg.durable, Extents: seg.exts, Meta: seg.meta}
}

func (s *sim) newSlot(w *simWriter, seq uint64, seg *simSeg, obj []byte) {
	if seq <= w.fenceSeq || w.slots[seq] != nil {
		s.failf("w%d: slot %d assigned twice", w.idx, seq)
		return
	}
	sl := &simSlot{seq: seq, seg: seg, obj: obj}
	w.slots[seq] = sl
	sl.op = s.send(w, opCreate, seq, obj)
}

func (s *sim) slotCreated(w *simWriter, sl *simSlot, res simOutcome) {
	switch res {
	case resOK:
		sl.state, sl.op = slotOursSim, 0
		if sl.seg.slot != sl.seq {
			s.stats.staleCopies++ // a moved segment's old copy landed after all
		}
		w.w.Landed(sl.seq)
	case resExists:
		if w.fenced {
			sl.state, sl.op = slotGivenUp, 0
			return
		}
		sl.op = s.send(w, opRead, sl.seq, nil)
		return
	default: // failed or unknown: retry the same create
		if w.fenced {
			sl.state, sl.op = slotGivenUp, 0
			return
		}
		sl.op = s.send(w, opCreate, sl.seq, sl.obj)
		return
	}
	s.afterOutcome(w)
}

func (s *sim) slotRead(w *simWriter, sl *simSlot, res simOutcome, obj []byte) {
	switch res {
	case resFail:
		if w.fenced {
			sl.state, sl.op = slotGivenUp, 0
			return
		}
		sl.op = s.send(w, opRead, sl.seq, nil)
		return
	case resMissing:
		s.failf("w%d: slot %d was taken but now reads as missing", w.idx, sl.seq)
		return
	}
	sl.op = 0
	r, err := format.DecodeRecord(obj, int64(len(obj)))
	if err != nil {
		s.failf("w%d: read slot %d: %v", w.idx, sl.seq, err)
		return
	}
	wasFenced := w.w.Fenced()
	moves, j := w.w.Taken(sl.seq, r)
	s.tracef("w%d slot %d holds %s epoch %d of w%d: %v, moves %v", w.idx, sl.seq, r.Type, r.Epoch, int(r.Writer[0])-1, j, moves)
	switch j {
	case Mine:
		sl.state = slotOursSim
		s.stats.mineAfterLost++
		if simAsserts && string(obj) != string(sl.obj) {
			s.failf("w%d: Taken judged slot %d Mine but it holds another record (%s epoch %d)", w.idx, sl.seq, r.Type, r.Epoch)
		}
	case Skip:
		sl.state = slotVoidSim
		s.stats.skips++
	case Fenced:
		sl.state = slotFenceSim
		if !wasFenced {
			w.fenced = true
			w.fencedAt = w.w.DurableSeg()
			s.stats.fenced++
			s.tracef("w%d is FENCED at slot %d; durable segment %d, acknowledged %d", w.idx, sl.seq, w.fencedAt, w.ackedTo)
		}
	}
	for _, mv := range moves {
		s.stats.moves++
		seg := w.byID[mv.Seg]
		if seg == nil {
			s.failf("w%d: move of unknown segment %d", w.idx, mv.Seg)
			return
		}
		if seg.slot != mv.From {
			s.failf("w%d: move of segment %d from %d, but it is at %d", w.idx, mv.Seg, mv.From, seg.slot)
			return
		}
		rec := s.dataRecord(w, seg, mv.To)
		nobj, err := format.Reseal(seg.obj, seg.dataLen, rec)
		if err != nil {
			s.failf("reseal: %v", err)
			return
		}
		seg.slot = mv.To
		s.newSlot(w, mv.To, seg, nobj)
	}
	s.afterOutcome(w)
}

// afterOutcome acknowledges the flushes the journal now calls durable, and
// checks the journal's answers against what the driver itself observed.
func (s *sim) afterOutcome(w *simWriter) {
	d := w.w.DurableSeg()
	if d < w.durable {
		s.failf("w%d: DurableSeg went back from %d to %d", w.idx, w.durable, d)
	}
	w.durable = d
	if w.fenced {
		if d > w.fencedAt {
			s.failf("w%d: DurableSeg advanced from %d to %d after the writer was fenced", w.idx, w.fencedAt, d)
		}
		return // a fenced writer acknowledges nothing further
	}
	for len(w.flushes) > 0 && w.flushes[0] <= d {
		x := w.flushes[0]
		w.flushes = w.flushes[1:]
		for ; w.acked < len(w.segs) && w.segs[w.acked].id <= x; w.acked++ {
			s.ack(w, w.segs[w.acked])
		}
		w.ackedTo = max(w.ackedTo, x)
	}
	if simAsserts {
		// The journal's slot for every segment not yet durable is the
		// driver's (Assign and Moves are the only ways slots change).
		for i := len(w.segs) - 1; i >= 0 && w.segs[i].id > d; i-- {
			if sq, ok := w.w.SlotOf(w.segs[i].id); !ok || sq != w.segs[i].slot {
				s.failf("w%d: journal has segment %d at slot %d (%v), driver at %d", w.idx, w.segs[i].id, sq, ok, w.segs[i].slot)
			}
		}
	}
	if len(w.segs) == w.budget && w.acked == len(w.segs) {
		w.phase = phDone
		s.tracef("w%d done: %d segments acknowledged; detaches", w.idx, w.budget)
	}
}

func (s *sim) ack(w *simWriter, seg *simSeg) {
	a := simAck{w: w.idx, epoch: w.w.Epoch(), seg: seg.id, slot: seg.slot, writes: seg.writes, step: s.step}
	w.vol.acks = append(w.vol.acks, a)
	s.stats.acks++
	s.tracef("w%d ACK segment %d at slot %d", w.idx, seg.id, seg.slot)
	if !simAsserts {
		return
	}
	// Driver cross-checks: the journal may only call a segment durable if
	// the driver saw its record land and every slot before it resolve.
	if seg.slot > w.w.Prefix() {
		s.failf("w%d: segment %d durable at slot %d above the prefix %d", w.idx, seg.id, seg.slot, w.w.Prefix())
	}
	for seq := w.fenceSeq + 1; seq <= seg.slot; seq++ {
		sl := w.slots[seq]
		switch {
		case sl == nil:
			s.failf("w%d: segment %d durable but slot %d was never assigned", w.idx, seg.id, seq)
		case sl.state == slotPendingSim || sl.state == slotGivenUp:
			s.failf("w%d: segment %d durable at %d but slot %d is unresolved", w.idx, seg.id, seg.slot, seq)
		case sl.state == slotFenceSim:
			s.failf("w%d: segment %d durable at %d past a newer writer's record at %d", w.idx, seg.id, seg.slot, seq)
		case seq == seg.slot && sl.state != slotOursSim:
			s.failf("w%d: segment %d durable but its slot %d holds someone else's record", w.idx, seg.id, seq)
		}
	}
}

// writerSnapshot builds the snapshot a writer may take: the map at its
// journal prefix, from the map at its fence plus the records it knows it
// has in the log (including stale copies of moved segments that landed).
func (s *sim) writerSnapshot(w *simWriter) *simSnap {
	p := w.w.Prefix()
	cells := maps.Clone(w.base)
	for seq := w.fenceSeq + 1; seq <= p; seq++ {
		sl := w.slots[seq]
		if sl == nil || sl.state != slotOursSim && sl.state != slotVoidSim {
			s.failf("w%d: journal prefix %d passes slot %d, which the driver has not seen resolve", w.idx, p, seq)
			return nil
		}
		if sl.state == slotOursSim {
			for _, wr := range sl.seg.writes {
				cells[wr.block] = simCell{val: wr.val, vol: w.vol.idx, seq: seq, w: w.idx, seg: sl.seg.id, zero: wr.zero}
			}
		}
	}
	sn := &simSnap{seq: p, st: State{Seq: p, Epoch: w.w.Epoch(), Writer: w.id}, cells: cells, by: w.idx}
	want, err := s.oracle(w.vol, p)
	if err != nil {
		s.failf("snapshot: oracle: %v", err)
		return nil
	}
	if want.st != sn.st || !cellsEqual(want.cells, cells) {
		s.failf("w%d's snapshot at %d disagrees with a replay from scratch (state %+v vs %+v): %s", w.idx, p, sn.st, want.st, cellsDiff(want.cells, cells))
		return nil
	}
	sn.time = want.timeAt(p)
	if sn.time != w.lastTime && w.w.DurableSeg() >= w.lastID() {
		// Everything the writer sealed is durable and in its prefix: the
		// header time it would write (Volume.lastTime) is the replay's.
		s.failf("w%d's snapshot at %d: header time %d, but a replay from scratch ends at time %d", w.idx, p, w.lastTime, sn.time)
		return nil
	}
	return sn
}
