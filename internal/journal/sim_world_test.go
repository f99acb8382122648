package journal

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/urldisk/urldisk/internal/format"
)

// simParams are the knobs of one seed, drawn from the seed itself.
type simParams struct {
	writers      int // writers that attach over the run (2–4)
	depth        int // segments a writer keeps in flight
	minBudget    int // segments a writer seals, at least
	maxBudget    int // and at most
	blocks       int // size of the block space (small: writes overlap)
	segBlocks    int // blocks per segment, at most
	pLost        float64
	pFail        float64
	pReadFail    float64
	pSlow        float64 // a request is slow (delivered rarely)
	pEvent       float64
	pAct         float64
	pFlush       float64
	pZero        float64
	timeouts     bool // requests time out and are reissued; the original may still land
	crashes      bool // writers crash mid-run
	snapshots    bool
	gc           bool
	partitionMax int  // a partitioned writer's requests wait for up to this many later attaches
	segStride    int  // segment ids advance by 1..segStride
	rogue        bool // a rogue puts records replay must void at the log head
}

func newSimParams(r *rand.Rand) simParams {
	p := simParams{
		writers:      2 + r.IntN(3),
		depth:        1 + r.IntN(6),
		minBudget:    2 + r.IntN(10),
		blocks:       2 + r.IntN(40),
		segBlocks:    1 + r.IntN(4),
		pLost:        []float64{0, 0.05, 0.2, 0.4}[r.IntN(4)],
		pFail:        []float64{0, 0.05, 0.2, 0.4}[r.IntN(4)],
		pReadFail:    []float64{0, 0.1, 0.3}[r.IntN(3)],
		pSlow:        []float64{0, 0.02, 0.1}[r.IntN(3)],
		pEvent:       0.02 + r.Float64()*0.06,
		pAct:         0.1 + r.Float64()*0.4,
		pFlush:       0.1 + r.Float64()*0.6,
		pZero:        []float64{0, 0.1}[r.IntN(2)],
		timeouts:     r.IntN(2) == 0,
		crashes:      r.IntN(2) == 0,
		snapshots:    r.IntN(4) != 0,
		partitionMax: 1 + r.IntN(3),
		segStride:    []int{1, 1, 3}[r.IntN(3)],
		rogue:        r.IntN(3) == 0,
	}
	p.maxBudget = p.minBudget + r.IntN(60)
	p.segBlocks = min(p.segBlocks, p.blocks)
	p.gc = p.snapshots && r.IntN(2) == 0
	return p
}

func (p simParams) String() string {
	return fmt.Sprintf("writers=%d depth=%d budget=%d..%d blocks=%d seg-blocks<=%d seg-stride=%d lost=%.2f fail=%.2f read-fail=%.2f slow=%.2f zero=%.1f timeouts=%v crashes=%v snapshots=%v gc=%v rogue=%v",
		p.writers, p.depth, p.minBudget, p.maxBudget, p.blocks, p.segBlocks, p.segStride, p.pLost, p.pFail, p.pReadFail, p.pSlow, p.pZero, p.timeouts, p.crashes, p.snapshots, p.gc, p.rogue)
}

// --- the store ---------------------------------------------------------

const (
	simBlock  = 8 // bytes per block: one unique uint64 value
	simVolume = "vol-sim"
)

// simWrite is one block written by a segment.
type simWrite struct {
	block uint64
	val   uint64 // globally unique; 0 for a zero extent
	zero  bool
}

// simRec is a decoded record with the sim's view of its contents.
type simRec struct {
	r      *format.Record
	w      int   // index of the sim writer that made it
	seg    SegID // data records: the writer's segment
	writes []simWrite
}

// simMeta is the JSON the sim puts in a record's Meta.
type simMeta struct {
	W   int   `json:"w"`
	Seg SegID `json:"seg,omitempty"`
}

// simCell is a block's value in a replayed map, with where it came from.
type simCell struct {
	val  uint64
	seq  uint64
	w    int
	seg  SegID
	zero bool
}

type simSnap struct {
	seq   uint64
	st    State
	cells map[uint64]simCell
	by    int
}

type simStore struct {
	objs    map[uint64][]byte
	archive map[uint64][]byte // records GC deleted: gone from the store, kept for the oracle
	dec     map[uint64]*simRec
	snaps   []*simSnap
	high    uint64 // highest seq ever created
}

// get returns the object at seq: live only, or live and GC'd (oracle).
func (st *simStore) get(seq uint64, withArchive bool) ([]byte, bool) {
	if b, ok := st.objs[seq]; ok {
		return b, true
	}
	if withArchive {
		b, ok := st.archive[seq]
		return b, ok
	}
	return nil, false
}

func (st *simStore) newest() *simSnap {
	var n *simSnap
	for _, s := range st.snaps {
		if n == nil || s.seq > n.seq {
			n = s
		}
	}
	return n
}

// decodeSim decodes a whole record object, including its data section.
func decodeSim(obj []byte) (*simRec, error) {
	r, err := format.DecodeRecord(obj, int64(len(obj)))
	if err != nil {
		return nil, err
	}
	var m simMeta
	if err := json.Unmarshal(r.Meta, &m); err != nil {
		return nil, fmt.Errorf("record %d meta: %v", r.Seq, err)
	}
	if int(r.Writer[0]) != m.W+1 {
		return nil, fmt.Errorf("record %d: writer id %v does not match meta writer %d", r.Seq, r.Writer, m.W)
	}
	sr := &simRec{r: r, w: m.W, seg: m.Seg}
	for _, x := range r.Extents {
		if x.Len != simBlock || x.Off%simBlock != 0 {
			return nil, fmt.Errorf("record %d: odd extent %+v", r.Seq, x)
		}
		wr := simWrite{block: x.Off / simBlock, zero: x.Zero}
		if !x.Zero {
			chunk := x.DataOff / format.ChunkSize
			data, err := format.DecodeFrame(obj[format.FramePos(chunk):], format.ChunkLen(r.DataLen, chunk))
			if err != nil {
				return nil, fmt.Errorf("record %d chunk %d: %w", r.Seq, chunk, err)
			}
			in := x.DataOff % format.ChunkSize
			wr.val = binary.LittleEndian.Uint64(data[in : in+simBlock])
		}
		sr.writes = append(sr.writes, wr)
	}
	return sr, nil
}

// decoded returns the (cached) decoded record at seq; records are immutable.
func (s *sim) decoded(seq uint64, obj []byte) (*simRec, error) {
	if r := s.store.dec[seq]; r != nil {
		return r, nil
	}
	r, err := decodeSim(obj)
	if err != nil {
		return nil, err
	}
	s.store.dec[seq] = r
	return r, nil
}

// --- messages ----------------------------------------------------------

type simOp uint8

const (
	opCreate simOp = iota // create-if-absent of seq with obj
	opRead                // get seq
	opReplay              // attach: load newest snapshot, list and replay to the first gap
)

func (o simOp) String() string { return [...]string{"create", "read", "replay"}[o] }

type simMsg struct {
	id        uint64
	owner     *simWriter // nil: its writer crashed; the request still flies
	from      int        // writer index, for the trace
	op        simOp
	seq       uint64
	obj       []byte
	slow      bool
	holdUntil int // not deliverable until this many attaches happened
	sentAt    int // attaches when sent
}

type simOutcome uint8

const (
	resOK      simOutcome = iota
	resExists             // create: slot taken
	resFail               // transient failure, not applied
	resUnknown            // applied (or not), response lost
	resMissing            // read: no such object
)

func (o simOutcome) String() string {
	return [...]string{"ok", "exists", "fail", "unknown", "missing"}[o]
}

// --- the world ---------------------------------------------------------

type sim struct {
	seed  uint64
	rng   *rand.Rand
	p     simParams
	store simStore

	queue   []*simMsg
	nextID  uint64
	release bool // drain: ignore holds

	writers   []*simWriter
	started   int
	attaches  int // fences landed for live attachers
	startNext int // the newest writer must have sealed this many segments before the next starts

	acks []simAck

	step     int
	err      error
	tracing  bool
	unsafeGC bool
	trace    []string
	stats    simStats
	finished bool
}

// simAck is an acknowledged segment: a FLUSH covering it returned.
type simAck struct {
	w      int
	epoch  uint64
	seg    SegID
	slot   uint64
	writes []simWrite
	step   int
}

type simResult struct {
	err    error
	trace  []string
	params simParams
	stats  simStats
}

const simMaxSteps = 400_000

// simOpts are per-run switches from the environment.
type simOpts struct {
	trace    bool // keep a trace of every step
	unsafeGC bool // GC without the grace guard (expected to break I1)
}

func runSim(seed uint64, o simOpts) simResult {
	s := &sim{
		seed:     seed,
		rng:      rand.New(rand.NewPCG(seed, 0x75726c6469736b)),
		tracing:  o.trace,
		unsafeGC: o.unsafeGC,
		store:    simStore{objs: map[uint64][]byte{}, archive: map[uint64][]byte{}, dec: map[uint64]*simRec{}},
	}
	s.p = newSimParams(s.rng)
	s.tracef("params: %s", s.p)
	s.run()
	s.stats.seeds = 1
	s.stats.steps = s.step
	s.stats.maxLog = int(s.store.high)
	return simResult{err: s.err, trace: s.trace, params: s.p, stats: s.stats}
}

func (s *sim) tracef(f string, args ...any) {
	if s.tracing {
		s.trace = append(s.trace, fmt.Sprintf("%6d ", s.step)+fmt.Sprintf(f, args...))
	}
}

// failf records the first violation; the run stops at the next step.
func (s *sim) failf(f string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("step %d: %s [%s]", s.step, fmt.Sprintf(f, args...), s.p)
		s.tracef("VIOLATION: %s", fmt.Sprintf(f, args...))
	}
}

func (s *sim) run() {
	s.startWriter()
	for ; s.err == nil && !s.finished; s.step++ {
		if s.step > simMaxSteps {
			s.failf("no quiescence after %d steps (livelock?)", simMaxSteps)
			return
		}
		s.tick()
	}
	if s.err == nil {
		s.finalChecks()
	}
}

func (s *sim) tick() {
	r := s.rng.Float64()
	var did bool
	switch {
	case r < s.p.pEvent:
		did = s.event() || s.deliver() || s.writerAction()
	case r < s.p.pEvent+s.p.pAct:
		did = s.writerAction() || s.deliver()
	default:
		did = s.deliver() || s.writerAction()
	}
	if did {
		return
	}
	// Nothing can move: start the next writer, release held requests, or stop.
	switch {
	case s.started < s.p.writers:
		s.startWriter()
	case !s.release && len(s.queue) > 0:
		s.tracef("release all held requests")
		s.release = true
	default:
		s.finished = true
	}
}

func (s *sim) send(w *simWriter, op simOp, seq uint64, obj []byte) uint64 {
	s.nextID++
	m := &simMsg{id: s.nextID, owner: w, from: w.idx, op: op, seq: seq, obj: obj, slow: s.rng.Float64() < s.p.pSlow, sentAt: s.attaches}
	if w.holdUntil > s.attaches {
		m.holdUntil = w.holdUntil
	}
	s.queue = append(s.queue, m)
	return m.id
}

func (s *sim) deliverable(m *simMsg) bool {
	return s.release || m.holdUntil <= s.attaches
}

// deliver hands one in-flight request, chosen by the seed, to the store and
// its outcome to the requester.
func (s *sim) deliver() bool {
	var fast, slow []int
	for i, m := range s.queue {
		if !s.deliverable(m) {
			continue
		}
		if m.slow {
			slow = append(slow, i)
		} else {
			fast = append(fast, i)
		}
	}
	if len(fast)+len(slow) == 0 {
		return false
	}
	var i int
	if len(slow) > 0 && (len(fast) == 0 || s.rng.IntN(30) == 0) {
		i = slow[s.rng.IntN(len(slow))]
	} else {
		i = fast[s.rng.IntN(len(fast))]
	}
	m := s.queue[i]
	if s.attaches >= m.sentAt+2 {
		s.stats.lateDeliveries++
	}
	s.queue[i] = s.queue[len(s.queue)-1]
	s.queue = s.queue[:len(s.queue)-1]

	switch m.op {
	case opCreate:
		res := s.storeCreate(m)
		s.respond(m, res, nil)
	case opRead:
		if s.rng.Float64() < s.p.pReadFail {
			s.respond(m, resFail, nil)
			return true
		}
		obj, ok := s.store.get(m.seq, false)
		if !ok {
			s.respond(m, resMissing, nil)
			return true
		}
		s.respond(m, resOK, obj)
	case opReplay:
		if s.rng.Float64() < s.p.pReadFail {
			s.respond(m, resFail, nil)
			return true
		}
		s.respond(m, resOK, nil)
	}
	return true
}

func (s *sim) storeCreate(m *simMsg) simOutcome {
	if s.rng.Float64() < s.p.pFail {
		return resFail
	}
	res := resExists
	if _, ok := s.store.objs[m.seq]; !ok {
		if _, gone := s.store.archive[m.seq]; gone && !s.unsafeGC {
			s.failf("w%d's create of slot %d landed after GC deleted that record (the sim's GC guard must prevent this)", m.from, m.seq)
		}
		delete(s.store.dec, m.seq) // only after unsafe GC: the slot holds another record now
		s.store.objs[m.seq] = m.obj
		s.store.high = max(s.store.high, m.seq)
		res = resOK
		if m.owner == nil {
			s.stats.zombieLanded++
		}
	}
	if s.rng.Float64() < s.p.pLost {
		s.stats.lostResponses++
		if res == resOK {
			s.tracef("w%d create %d: applied, response lost", m.from, m.seq)
		}
		return resUnknown
	}
	return res
}

func (s *sim) respond(m *simMsg, res simOutcome, obj []byte) {
	w := m.owner
	if w == nil || w.phase == phCrashed || w.phase == phDone {
		s.tracef("w%d %v %d -> %v (zombie request, nobody listens)", m.from, m.op, m.seq, res)
		return
	}
	s.tracef("w%d %v %d -> %v", m.from, m.op, m.seq, res)
	switch m.op {
	case opReplay:
		if w.op == m.id {
			s.attachReplayed(w, res)
		}
	case opCreate:
		if w.phase == phAttach {
			if w.op == m.id {
				s.fenceCreated(w, res)
			}
			return
		}
		sl := w.slots[m.seq]
		switch {
		case sl == nil:
		case sl.op == m.id:
			s.slotCreated(w, sl, res)
		case res == resOK && sl.state == slotPendingSim:
			// A request the writer had given up on (timed out) landed and
			// its answer still arrives: as good as the current one's.
			s.slotCreated(w, sl, res)
		case res == resOK && sl.state == slotOursSim:
			// The same, after the slot resolved: the journal must take a
			// duplicate outcome in its stride.
			w.w.Landed(m.seq)
			s.afterOutcome(w)
		}
	case opRead:
		if sl := w.slots[m.seq]; sl != nil && sl.op == m.id {
			s.slotRead(w, sl, res, obj)
		}
	}
}

// --- scenario events ---------------------------------------------------

func (s *sim) newest() *simWriter {
	if len(s.writers) == 0 {
		return nil
	}
	return s.writers[len(s.writers)-1]
}

func (s *sim) live() []*simWriter {
	var l []*simWriter
	for _, w := range s.writers {
		if w.isLive() {
			l = append(l, w)
		}
	}
	return l
}

func (s *sim) event() bool {
	type choice struct {
		weight int
		do     func() bool
	}
	var cs []choice
	if nw := s.newest(); s.started < s.p.writers && (nw == nil || !nw.isLive() || len(nw.segs) >= s.startNext) {
		cs = append(cs, choice{6, s.takeover})
	}
	if s.p.snapshots {
		cs = append(cs, choice{3, s.snapshot})
	}
	if s.p.gc && len(s.store.snaps) > 0 {
		cs = append(cs, choice{2, s.collect})
	}
	if s.p.timeouts {
		cs = append(cs, choice{3, s.timeout})
	}
	if s.p.rogue {
		cs = append(cs, choice{1, s.rogueRecord})
	}
	if s.p.crashes && s.started < s.p.writers {
		cs = append(cs, choice{1, s.crashOne})
	}
	total := 0
	for _, c := range cs {
		total += c.weight
	}
	if total == 0 {
		return false
	}
	n := s.rng.IntN(total)
	for _, c := range cs {
		if n < c.weight {
			return c.do()
		}
		n -= c.weight
	}
	return false
}

// takeover starts the next writer and decides what happens to the newest
// one: it keeps running (and learns it is fenced the hard way), crashes
// (its requests dropped, or kept flying as zombie traffic), or is
// partitioned (alive, its requests held until later writers attached).
func (s *sim) takeover() bool {
	if old := s.newest(); old != nil && old.isLive() {
		s.stats.takeovers++
		switch s.rng.IntN(5) {
		case 0, 1:
			s.tracef("takeover: w%d keeps running", old.idx)
		case 2:
			s.crash(old, false)
		case 3:
			s.crash(old, true)
		case 4:
			s.partition(old)
		}
	}
	s.startWriter()
	return true
}

func (s *sim) crashOne() bool {
	l := s.live()
	if len(l) == 0 {
		return false
	}
	s.crash(l[s.rng.IntN(len(l))], s.rng.IntN(2) == 0)
	return true
}

// crash kills w. With keep, its in-flight requests stay in the network and
// some are held until later writers attached (zombie traffic).
func (s *sim) crash(w *simWriter, keep bool) {
	s.stats.crashes++
	w.phase = phCrashed
	s.tracef("crash w%d (keep requests: %v)", w.idx, keep)
	q := s.queue[:0]
	for _, m := range s.queue {
		if m.owner != w {
			q = append(q, m)
			continue
		}
		if !keep || s.rng.IntN(4) == 0 {
			continue
		}
		m.owner = nil
		if s.rng.IntN(2) == 0 {
			m.holdUntil = max(m.holdUntil, s.attaches+1+s.rng.IntN(s.p.partitionMax))
		}
		q = append(q, m)
	}
	clear(s.queue[len(q):])
	s.queue = q
}

// partition holds w's requests (in flight and future) until more writers
// attached: a paused process or a network partition, the classic zombie.
func (s *sim) partition(w *simWriter) {
	s.stats.partitions++
	w.holdUntil = s.attaches + 1 + s.rng.IntN(s.p.partitionMax)
	s.tracef("partition w%d until %d attaches", w.idx, w.holdUntil)
	for _, m := range s.queue {
		if m.owner == w {
			m.holdUntil = max(m.holdUntil, w.holdUntil)
		}
	}
}

// timeout makes a live requester give up waiting on one request and issue
// it again; the original stays in flight and may still land.
func (s *sim) timeout() bool {
	var cand []*simMsg
	for _, m := range s.queue {
		w := m.owner
		if w == nil || !w.isLive() || w.fenced {
			continue
		}
		if w.phase == phAttach && w.op == m.id {
			cand = append(cand, m)
		}
		if w.phase == phWrite {
			if sl := w.slots[m.seq]; sl != nil && sl.op == m.id {
				cand = append(cand, m)
			}
		}
	}
	if len(cand) == 0 {
		return false
	}
	m := cand[s.rng.IntN(len(cand))]
	w := m.owner
	s.stats.timeouts++
	s.tracef("w%d times out on %v %d; the request stays in flight", w.idx, m.op, m.seq)
	id := s.send(w, m.op, m.seq, m.obj)
	if w.phase == phAttach {
		w.op = id
	} else {
		w.slots[m.seq].op = id
	}
	return true
}

// snapshot: a writer writes a snapshot of the map at its resolved prefix,
// built only from what it knows is in the log.
func (s *sim) snapshot() bool {
	var cand []*simWriter
	for _, w := range s.writers {
		if w.phase == phWrite && !w.fenced {
			cand = append(cand, w)
		}
	}
	if len(cand) == 0 {
		return false
	}
	w := cand[s.rng.IntN(len(cand))]
	sn := s.writerSnapshot(w)
	if sn == nil {
		return true
	}
	for _, o := range s.store.snaps {
		if o.seq == sn.seq {
			if o.st != sn.st || !cellsEqual(o.cells, sn.cells) {
				s.failf("w%d's snapshot at %d differs from w%d's snapshot at the same seq", w.idx, sn.seq, o.by)
			}
			return true
		}
	}
	s.store.snaps = append(s.store.snaps, sn)
	s.stats.snapshots++
	s.tracef("w%d snapshot at %d (epoch %d)", w.idx, sn.seq, sn.st.Epoch)
	return true
}

// collect deletes records at or below the newest snapshot, never fences
// (I4), and only where no request could still create the slot: the sim's
// stand-in for I5's grace period.
func (s *sim) collect() bool {
	sn := s.store.newest()
	if sn == nil {
		return false
	}
	low := s.gcLow()
	if s.unsafeGC {
		low = math.MaxUint64
	}
	n := 0
	for seq := uint64(1); seq <= sn.seq && seq < low; seq++ {
		obj, ok := s.store.objs[seq]
		if !ok {
			continue
		}
		r, err := s.decoded(seq, obj)
		if err != nil {
			s.failf("gc: record %d: %v", seq, err)
			return true
		}
		if r.r.Type == format.RecordFence {
			continue
		}
		delete(s.store.objs, seq)
		s.store.archive[seq] = obj
		n++
	}
	s.stats.gcDeleted += n
	s.tracef("gc below snapshot %d (guard %d): deleted %d records", sn.seq, low, n)
	return true
}

// gcLow is the lowest seq any live writer or in-flight request may still
// try to create or read.
func (s *sim) gcLow() uint64 {
	low := uint64(math.MaxUint64)
	for _, m := range s.queue {
		if m.op != opReplay {
			low = min(low, m.seq)
		}
	}
	for _, w := range s.writers {
		switch w.phase {
		case phAttach:
			if w.loaded {
				low = min(low, w.st.Seq+1)
			}
		case phWrite:
			if w.fenced {
				continue
			}
			low = min(low, w.w.Next())
			for seq, sl := range w.slots {
				if sl.state == slotPendingSim {
					low = min(low, seq)
				}
			}
		}
	}
	return low
}

// simRogue is the writer index of records no attached writer made.
const simRogue = 250

// rogueRecord creates, at the head of the log, a record that replay must
// void: a stale fence (epoch not above the current one), data of the
// current epoch from a writer that does not own it, or data of an older
// epoch. Writers that meet one in their slot skip it or stop (fenced).
func (s *sim) rogueRecord() bool {
	rp, err := s.oracle(math.MaxUint64)
	if err != nil {
		s.failf("rogue: %v", err)
		return true
	}
	e := rp.st.Epoch
	if e == 0 {
		return false
	}
	r := &format.Record{Seq: rp.st.Seq + 1, Volume: simVolume, Time: int64(s.step), Meta: []byte(`{"w":250}`)}
	r.Writer[0] = simRogue + 1
	for i := 1; i < len(r.Writer); i++ {
		r.Writer[i] = byte(s.rng.Uint32())
	}
	var b *format.Builder
	kind := s.rng.IntN(3)
	switch {
	case kind == 0 || kind == 2 && e == 1:
		r.Type, r.Epoch = format.RecordFence, 1+s.rng.Uint64N(e)
	default:
		r.Type, r.Epoch = format.RecordData, e
		if kind == 2 {
			r.Epoch = 1 + s.rng.Uint64N(e-1)
		}
		s.nextID++
		blk := uint64(s.rng.IntN(s.p.blocks))
		b = format.NewBuilder(simBlock)
		off := b.Append(binary.LittleEndian.AppendUint64(nil, uint64(simRogue+1)<<48|s.nextID))
		r.Extents = []format.Extent{{Off: blk * simBlock, Len: simBlock, DataOff: off}}
	}
	obj, err := format.EncodeRecord(r, b)
	if err != nil {
		s.failf("rogue: %v", err)
		return true
	}
	s.store.objs[r.Seq] = obj
	s.store.high = max(s.store.high, r.Seq)
	s.stats.rogue++
	s.tracef("rogue %s epoch %d at %d (current epoch %d)", r.Type, r.Epoch, r.Seq, e)
	return true
}
