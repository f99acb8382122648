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
	writers      int // writers that attach to the first volume over the run (2–4)
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
	pOp          float64 // a step advances a pool operation (GC run, clone, remove)
	pFlush       float64
	pZero        float64
	timeouts     bool // requests time out and are reissued; the original may still land
	crashes      bool // writers crash mid-run
	snapshots    bool
	gc           bool // GC runs while writers write (the teardown always runs GC)
	partitionMax int  // a partitioned writer's requests wait for up to this many later attaches
	segStride    int  // segment ids advance by 1..segStride
	rogue        bool // a rogue puts records replay must void at the log head

	// The pool around the first volume.
	vols         int  // volumes at most, clones included (1: no clones)
	cloneWriters int  // a clone gets 0..cloneWriters writers
	ckpts        bool // checkpoints (and checkpoint removal)
	removes      int  // volumes removed mid-run, at most
	gcConc       int  // GC runs in flight at once, at most

	// Time, in scheduler steps. The assumptions the real system makes
	// about wall-clock time are encoded as deadlines: a clone completes
	// within cloneDur steps (the real margin: an hour), a GC's two listings
	// are at most listGap steps apart, grace > cloneDur+listGap, margin >=
	// cloneDur, and retention >= margin (the pool and GC use the same
	// retention). Requests may fly for any time: the guard "no request can
	// still create or read the slot" stands in for "no request outlives the
	// grace period".
	grace     int // G: GC deletes nothing younger than this
	retention int // R: every point of the last R steps stays clonable (0: head and checkpoints only)
	margin    int // M: seq points older than R-M are refused (the real "retention minus one hour")
	cloneDur  int // C
	listGap   int // L
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
	p.gc = p.snapshots && r.IntN(4) != 0

	p.vols = []int{1, 2, 4, 6}[r.IntN(4)]
	p.cloneWriters = 1 + r.IntN(3)
	p.ckpts = r.IntN(3) != 0
	p.removes = []int{0, 1, 2}[r.IntN(3)]
	p.gcConc = 1 + r.IntN(2)
	p.pOp = 0.03 + r.Float64()*0.2
	p.cloneDur = 3 + r.IntN(10)
	p.listGap = 1 + r.IntN(4)
	p.grace = p.cloneDur + p.listGap + 1 + []int{0, 10, 60, 300}[r.IntN(4)]
	p.margin = p.cloneDur + []int{0, 20}[r.IntN(2)]
	// Retention 0 (GC keeps heads and checkpoints only) is outside the
	// pool's promise (PoolOptions.Retention: "a concurrent GC with the same
	// retention never races them"); only known=retention-0 runs it.
	p.retention = p.margin + []int{0, 10, 60, 400}[r.IntN(4)]
	return p
}

func (p simParams) String() string {
	return fmt.Sprintf("writers=%d depth=%d budget=%d..%d blocks=%d seg-blocks<=%d seg-stride=%d lost=%.2f fail=%.2f read-fail=%.2f slow=%.2f zero=%.1f timeouts=%v crashes=%v snapshots=%v gc=%v rogue=%v "+
		"vols<=%d clone-writers<=%d ckpts=%v removes<=%d gc-conc=%d op=%.2f grace=%d retention=%d margin=%d clone-dur=%d list-gap=%d",
		p.writers, p.depth, p.minBudget, p.maxBudget, p.blocks, p.segBlocks, p.segStride, p.pLost, p.pFail, p.pReadFail, p.pSlow, p.pZero, p.timeouts, p.crashes, p.snapshots, p.gc, p.rogue,
		p.vols, p.cloneWriters, p.ckpts, p.removes, p.gcConc, p.pOp, p.grace, p.retention, p.margin, p.cloneDur, p.listGap)
}

// --- the store ---------------------------------------------------------

const simBlock = 8 // bytes per block: one unique uint64 value

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

// simCell is a block's value in a replayed map, with the record it comes
// from: (vol, seq), where vol is an ancestor's index for a clone's
// inherited blocks.
type simCell struct {
	val  uint64
	vol  int
	seq  uint64
	w    int
	seg  SegID
	zero bool
}

// simRef names a record: (volume index, seq).
type simRef struct {
	vol int
	seq uint64
}

type simSnap struct {
	seq   uint64
	st    State
	cells map[uint64]simCell
	by    int   // writer index, -1: offline (checkpoint or clone)
	born  int   // step it was written (its ModTime)
	time  int64 // its header's Time: the newest time of the non-void records up to seq
}

type simStore struct {
	objs    map[uint64][]byte
	born    map[uint64]int    // step each live record landed: its ModTime
	archive map[uint64][]byte // deleted records (by GC or remove), kept for the oracle
	byGC    map[uint64]int    // archive entries GC deleted: the step
	dec     map[uint64]*simRec
	snaps   []*simSnap // live snapshots
	high    uint64     // highest seq ever created
}

func newSimStore() simStore {
	return simStore{objs: map[uint64][]byte{}, born: map[uint64]int{}, archive: map[uint64][]byte{}, byGC: map[uint64]int{}, dec: map[uint64]*simRec{}}
}

// get returns the object at seq: live only, or live and deleted (oracle).
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

// newestAtOrBelow is what loadImage(limit) starts from.
func (st *simStore) newestAtOrBelow(limit uint64) *simSnap {
	var n *simSnap
	for _, s := range st.snaps {
		if s.seq <= limit && (n == nil || s.seq > n.seq) {
			n = s
		}
	}
	return n
}

func (st *simStore) snapAt(seq uint64) *simSnap {
	for _, s := range st.snaps {
		if s.seq == seq {
			return s
		}
	}
	return nil
}

func (st *simStore) empty() bool { return len(st.objs) == 0 && len(st.snaps) == 0 }

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

// decoded returns the (cached) decoded record at seq of v; records are immutable.
func (s *sim) decoded(v *simVol, seq uint64, obj []byte) (*simRec, error) {
	if r := v.store.dec[seq]; r != nil {
		return r, nil
	}
	r, err := decodeSim(obj)
	if err != nil {
		return nil, err
	}
	if r.r.Volume != v.id || r.r.Seq != seq {
		return nil, fmt.Errorf("record at %s/%d names %s/%d", v.id, seq, r.r.Volume, r.r.Seq)
	}
	v.store.dec[seq] = r
	return r, nil
}

// --- volumes -------------------------------------------------------------

// simVol is one volume of the pool: a root, or a clone whose snapshot 0
// (base) references its ancestors' records.
type simVol struct {
	idx    int
	id     string // the records' Volume field
	key    uint64 // listing order (real volume ids are random)
	store  simStore
	parent *simVol
	from   uint64             // clone: the source's seq (ParentRef.Seq)
	base   map[uint64]simCell // clone: the map of snapshot 0; nil for a root
	// baseTime is snapshot 0's header Time: where the volume's record
	// times (as replay keeps them: the newest of the non-void records')
	// start.
	baseTime int64
	how      string

	nWriters  int // writers this volume gets over the run
	writers   []*simWriter
	started   int
	attaches  int // fences landed for live attachers
	startNext int // the newest writer must have sealed this many segments before the next starts
	acks      []simAck

	ckpts   []*simCkpt // live checkpoint documents
	rmCkpts []*simCkpt // copies of removed checkpoints (ckpt-removed/<label>), born when removed

	// Pool metadata: descriptor, name binding, tombstone.
	desc     bool
	descBorn int
	named    bool
	tomb     bool
	tombBorn int
	removing bool // a Remove started: no more writers or checkpoints
}

// hasObjects: something of v is under vols/<id>/.
func (v *simVol) hasObjects() bool {
	return v.desc || v.tomb || !v.store.empty() || len(v.ckpts) > 0 || len(v.rmCkpts) > 0
}

// exists: the volume has a descriptor and no tombstone (I4 protects its fences).
func (v *simVol) exists() bool { return v.desc && !v.tomb }

// usable: it can be opened, cloned, checkpointed by name.
func (v *simVol) usable() bool { return v.named && v.desc && !v.removing }

// simCkpt is a checkpoint document: a label naming a seq, with the
// snapshot written at that seq.
type simCkpt struct {
	label string
	seq   uint64
	snap  *simSnap
	born  int // the document's ModTime (of the ckpt-removed/ copy, once removed)
}

func (s *sim) newVol(parent *simVol, from uint64, base map[uint64]simCell, how string) *simVol {
	v := &simVol{idx: len(s.vols), key: s.rng.Uint64(), store: newSimStore(), parent: parent, from: from, base: base, how: how}
	v.id = fmt.Sprintf("vol-sim-%d", v.idx)
	return v
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
	vol       *simVol
	from      int // writer index, for the trace
	op        simOp
	seq       uint64
	obj       []byte
	slow      bool
	holdUntil int // not deliverable until the volume had this many attaches
	sentAt    int // the volume's attaches when sent
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
	vols  []*simVol
	root  *simVol
	known map[string]bool // known problems to exercise (see simKnown)

	queue   []*simMsg
	nextID  uint64
	release bool // drain: ignore holds

	writers []*simWriter // every writer of every volume, by index

	clones  []*simCloneOp // in progress
	removes []*simRemoveOp
	gcs     []*simGC
	nClones int
	nRemove int
	nGC     int
	nCkpt   int

	version int // bumped whenever a live map may have changed (the I5 checker caches on it)
	marks   *simMarkCache

	step      int
	err       error
	tracing   bool
	unsafeGC  bool
	trace     []string
	stats     simStats
	finished  bool
	teardown  bool
	deletedBy map[simRef]string // what deleted each record, for messages

	gcLastDeleted int // objects the last GC run to finish deleted
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
	trace    bool            // keep a trace of every step
	unsafeGC bool            // GC without the guard (expected to break I1)
	known    map[string]bool // known problems to exercise (expected to fail)
}

func runSim(seed uint64, o simOpts) simResult {
	s := &sim{
		seed:      seed,
		rng:       rand.New(rand.NewPCG(seed, 0x75726c6469736b)),
		tracing:   o.trace,
		unsafeGC:  o.unsafeGC,
		known:     o.known,
		deletedBy: map[simRef]string{},
	}
	s.p = newSimParams(s.rng)
	if s.known[knownRetention0] {
		s.p.retention = 0
	}
	s.tracef("params: %s", s.p)
	s.run()
	s.stats.seeds = 1
	s.stats.steps = s.step
	for _, v := range s.vols {
		s.stats.maxLog = max(s.stats.maxLog, int(v.store.high))
	}
	s.stats.vols += len(s.vols)
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
	// Time starts at 1: a record time of 0 means "none" to checkRetained.
	s.step = 1
	root := s.newVol(nil, 0, nil, "root")
	root.desc, root.descBorn, root.named, root.nWriters = true, s.step, true, s.p.writers
	// Pool.Create writes an empty snapshot 0 dated at creation, as Clone
	// does for a clone: it is the retention base of a volume younger than
	// the window.
	root.baseTime = int64(s.step)
	root.store.snaps = append(root.store.snaps, &simSnap{seq: 0, cells: map[uint64]simCell{}, by: -1, born: s.step, time: root.baseTime})
	s.vols = append(s.vols, root)
	s.root = root
	s.startWriter(root)
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
	if s.err == nil {
		s.teardownAll()
	}
}

func (s *sim) tick() {
	if s.forcedOp() {
		return
	}
	r := s.rng.Float64()
	var did bool
	switch {
	case r < s.p.pEvent:
		did = s.event() || s.deliver() || s.writerAction()
	case r < s.p.pEvent+s.p.pOp:
		did = s.opStep() || s.deliver() || s.writerAction()
	case r < s.p.pEvent+s.p.pOp+s.p.pAct:
		did = s.writerAction() || s.deliver()
	default:
		did = s.deliver() || s.writerAction()
	}
	if did {
		return
	}
	// Nothing can move: start a volume's next writer, finish a pool
	// operation, release held requests, or stop.
	if v := s.pendingStart(); v != nil {
		s.startWriter(v)
		return
	}
	if s.opStep() {
		return
	}
	if !s.release && len(s.queue) > 0 {
		s.tracef("release all held requests")
		s.release = true
		return
	}
	s.finished = true
}

// pendingStart returns a usable volume that still has writers to start.
func (s *sim) pendingStart() *simVol {
	var c []*simVol
	for _, v := range s.vols {
		if v.usable() && v.started < v.nWriters {
			c = append(c, v)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[s.rng.IntN(len(c))]
}

func (s *sim) send(w *simWriter, op simOp, seq uint64, obj []byte) uint64 {
	s.nextID++
	m := &simMsg{id: s.nextID, owner: w, vol: w.vol, from: w.idx, op: op, seq: seq, obj: obj, slow: s.rng.Float64() < s.p.pSlow, sentAt: w.vol.attaches}
	if w.holdUntil > w.vol.attaches {
		m.holdUntil = w.holdUntil
	}
	s.queue = append(s.queue, m)
	return m.id
}

func (s *sim) deliverable(m *simMsg) bool {
	return s.release || m.holdUntil <= m.vol.attaches
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
	if m.vol.attaches >= m.sentAt+2 {
		s.stats.lateDeliveries++
	}
	s.queue[i] = s.queue[len(s.queue)-1]
	s.queue = s.queue[:len(s.queue)-1]

	st := &m.vol.store
	switch m.op {
	case opCreate:
		res := s.storeCreate(m)
		s.respond(m, res, nil)
	case opRead:
		if s.rng.Float64() < s.p.pReadFail {
			s.respond(m, resFail, nil)
			return true
		}
		obj, ok := st.get(m.seq, false)
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
	st := &m.vol.store
	res := resExists
	if _, ok := st.objs[m.seq]; !ok {
		if at, gone := st.byGC[m.seq]; gone && !s.unsafeGC {
			s.failf("w%d's create of %s slot %d landed after GC deleted that record at step %d (the sim's GC guard must prevent this)", m.from, m.vol.id, m.seq, at)
		}
		if _, gone := st.archive[m.seq]; gone {
			s.stats.createAfterDelete++
			s.tracef("w%d create %d of %s lands in a slot %s emptied", m.from, m.seq, m.vol.id, s.deletedBy[simRef{m.vol.idx, m.seq}])
		}
		delete(st.dec, m.seq) // only after a deletion: the slot holds another record now
		st.objs[m.seq] = m.obj
		st.born[m.seq] = s.step
		st.high = max(st.high, m.seq)
		s.version++
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

func (v *simVol) newest() *simWriter {
	if len(v.writers) == 0 {
		return nil
	}
	return v.writers[len(v.writers)-1]
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

// takeoverCands: usable volumes whose next writer may start now.
func (s *sim) takeoverCands() []*simVol {
	var c []*simVol
	for _, v := range s.vols {
		if !v.usable() || v.started >= v.nWriters {
			continue
		}
		if nw := v.newest(); nw == nil || !nw.isLive() || len(nw.segs) >= v.startNext {
			c = append(c, v)
		}
	}
	return c
}

func (s *sim) event() bool {
	type choice struct {
		weight int
		do     func() bool
	}
	var cs []choice
	if tc := s.takeoverCands(); len(tc) > 0 {
		cs = append(cs, choice{6, func() bool { return s.takeover(tc[s.rng.IntN(len(tc))]) }})
	}
	if s.p.snapshots {
		cs = append(cs, choice{3, s.snapshot})
	}
	if s.p.gc && len(s.gcs) < s.p.gcConc && s.nGC < 40 {
		cs = append(cs, choice{2, s.startGC})
	}
	if s.p.timeouts {
		cs = append(cs, choice{3, s.timeout})
	}
	if s.p.rogue {
		cs = append(cs, choice{1, s.rogueRecord})
	}
	if s.p.crashes && s.pendingStart() != nil {
		cs = append(cs, choice{1, s.crashOne})
	}
	if len(s.vols) < s.p.vols {
		cs = append(cs, choice{3, s.startClone})
	}
	if len(s.clones) > 0 {
		cs = append(cs, choice{4, s.raceClone})
	}
	if s.p.ckpts && s.nCkpt < 8 {
		cs = append(cs, choice{2, s.checkpoint}, choice{1, s.removeCheckpoint})
	}
	if s.nRemove < s.p.removes {
		cs = append(cs, choice{1, s.startRemove})
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

// takeover starts v's next writer and decides what happens to its newest
// one: it keeps running (and learns it is fenced the hard way), crashes
// (its requests dropped, or kept flying as zombie traffic), or is
// partitioned (alive, its requests held until later writers attached).
func (s *sim) takeover(v *simVol) bool {
	if old := v.newest(); old != nil && old.isLive() {
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
	s.startWriter(v)
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
			m.holdUntil = max(m.holdUntil, w.vol.attaches+1+s.rng.IntN(s.p.partitionMax))
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
	w.holdUntil = w.vol.attaches + 1 + s.rng.IntN(s.p.partitionMax)
	s.tracef("partition w%d until %s has %d attaches", w.idx, w.vol.id, w.holdUntil)
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
		if w.phase == phWrite && !w.fenced && !w.vol.removing {
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
	s.addSnap(w.vol, sn)
	return true
}

// addSnap stores a snapshot (the same seq twice must hold the same map)
// and returns the one stored.
func (s *sim) addSnap(v *simVol, sn *simSnap) *simSnap {
	if o := v.store.snapAt(sn.seq); o != nil {
		if o.st != sn.st || !cellsEqual(o.cells, sn.cells) {
			s.failf("%s: snapshot at %d by w%d differs from the one already there (by w%d)", v.id, sn.seq, sn.by, o.by)
		}
		return o
	}
	sn.born = s.step
	v.store.snaps = append(v.store.snaps, sn)
	s.version++
	s.stats.snapshots++
	s.tracef("%s snapshot at %d (epoch %d) by w%d", v.id, sn.seq, sn.st.Epoch, sn.by)
	return sn
}

// gcLow is the lowest seq of v any live writer or in-flight request may
// still try to create or read: the sim's stand-in for "no request outlives
// the grace period".
func (s *sim) gcLow(v *simVol) uint64 {
	low := uint64(math.MaxUint64)
	for _, m := range s.queue {
		if m.vol == v && m.op != opReplay {
			low = min(low, m.seq)
		}
	}
	for _, w := range v.writers {
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

// rogueRecord creates, at the head of a volume's log, a record that replay
// must void: a stale fence (epoch not above the current one), data of the
// current epoch from a writer that does not own it, or data of an older
// epoch. Writers that meet one in their slot skip it or stop (fenced).
func (s *sim) rogueRecord() bool {
	var cand []*simVol
	for _, v := range s.vols {
		if v.usable() {
			cand = append(cand, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	v := cand[s.rng.IntN(len(cand))]
	rp, err := s.oracle(v, math.MaxUint64)
	if err != nil {
		s.failf("rogue: %v", err)
		return true
	}
	e := rp.st.Epoch
	if e == 0 {
		return false
	}
	// A void record may carry any clock (a zombie's is stale): replay
	// ignores it.
	t := int64(max(1, s.step-s.rng.IntN(s.p.retention+s.p.grace+1)))
	r := &format.Record{Seq: rp.st.Seq + 1, Volume: v.id, Time: t, Meta: []byte(`{"w":250}`)}
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
	if _, gone := v.store.archive[r.Seq]; gone {
		delete(v.store.dec, r.Seq)
	}
	v.store.objs[r.Seq] = obj
	v.store.born[r.Seq] = s.step
	v.store.high = max(v.store.high, r.Seq)
	s.version++
	s.stats.rogue++
	s.tracef("rogue %s epoch %d at %s/%d (current epoch %d)", r.Type, r.Epoch, v.id, r.Seq, e)
	return true
}
