package journal

// Deterministic simulation of the log and fencing protocol (DESIGN.md §5)
// and of pool GC, clones and removal around it (§7).
//
// One seed is one interleaving: a simulated object store with
// create-if-absent, every store operation a message that the seeded
// scheduler delivers in any order, injected faults (creates that fail
// without applying, creates that apply but lose their response, failing
// reads, timed-out requests that still land later), writers that attach
// over time (takeovers while the old writer is active, crashes that drop or
// keep their in-flight requests, partitioned zombies whose requests arrive
// after several later writers), snapshots, and (in some seeds) rogue
// records at the log head that replay must void: stale fences, data of the
// current epoch from a writer that does not own it, data of an older epoch.
//
// Around the first volume, a pool (sim_pool_test.go, sim_gc_test.go):
// clones made at random moments from a volume's head, a checkpoint or a seq
// inside the retention window (Pool.Clone: replay, descriptor, snapshot 0
// naming the source's records, name), clones of clones, each with writers
// of its own; checkpoints (a writer's or offline) and their removal; volume
// removal (Pool.Remove: tombstone, unbind; nothing deleted: GC protects a
// volume whose tombstone is younger than the grace period, then collects
// it); races of both removals with clones in progress (raceClone); and GC runs (the
// real planner, internal/gcplan, which volume.Pool.GC calls, driven with
// simulated I/O standing in for gc.go's scan, markVolume and plan) as sequences of steps:
// list names, list volumes, mark one volume per step, plan, delete one
// object per step, all interleaved with the writers, zombies, clones and
// removals, up to two runs at once. Time is the scheduler's step: records
// and snapshots carry the step they were written in, grace and retention
// are counted in steps, and the real system's timing assumptions are
// deadlines (see simParams). At the end every volume is removed and GC runs
// until it finds nothing to delete. There are no goroutines and no clocks
// inside a seed; seeds run in parallel.
//
// Checked after every attach, clone, GC run and at the end, on every
// volume that exists: a replay from scratch (of every record ever written,
// deleted ones included, from a clone's initial map) and a replay from the
// newest snapshot agree, and so does the attacher's own replay;
// journal.Replay's verdicts match an independent statement of DESIGN.md
// §5's rules; I1 (every acknowledged segment's blocks read its value or a
// newer record's, and every block of a head or checkpoint map reads a
// record that still exists: a clone's inherited blocks read an ancestor's),
// I2 (every visible value comes from an applied record or a clone's initial
// map), I3 (no writer acknowledged a slot above a newer epoch's fence; none
// of its records there applies), no gap below an acknowledged slot, replay
// never errors, snapshots equal the replay at their seq, a fenced writer
// acknowledges nothing further, every writer still attached at the end got
// everything acknowledged, and what each writer believed about its slots
// (mine / void) is what the log holds. Checked at every deletion, against
// marks the checker computes itself at that moment (every map of every
// existing volume from the oldest point the retention window promises to
// its head, every checkpoint's, every clone's and every clone in
// progress): I4 (GC deletes no fence of an existing volume) and I5 (a
// record GC deletes is unreferenced, older than the grace period, and, for
// an existing volume, at or below a snapshot; a snapshot it deletes is no
// checkpoint's and leaves one for the oldest retained point). After the
// teardown nothing of any volume is left (orphaned prefixes included).
//
//	go test -run TestSimulation ./internal/journal                       # URLDISK_SIM_SEEDS seeds (default 2000)
//	URLDISK_SIM_SEED=1234 go test -run TestSimulation ./internal/journal -v  # one seed, with a trace
//
// URLDISK_SIM_START sets the first seed of a batch (default 1),
// URLDISK_SIM_REPORT how many failing seeds to list (default 10).
// URLDISK_SIM_UNSAFE_GC=1 lets GC delete records while a request may still
// create them (no grace period): expected to fail, it shows why I5's grace
// period is load-bearing. URLDISK_SIM_KNOWN=name,... (or all) lets the
// known problems listed below happen: expected to fail.

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const simReplayCmd = "URLDISK_SIM_SEED=%d go test -run TestSimulation ./internal/journal -v"

func TestSimulation(t *testing.T) {
	opts := simOpts{
		unsafeGC: os.Getenv("URLDISK_SIM_UNSAFE_GC") != "",
		known:    parseKnown(t, os.Getenv("URLDISK_SIM_KNOWN")),
	}
	if s := os.Getenv("URLDISK_SIM_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("URLDISK_SIM_SEED=%q: %v", s, err)
		}
		o := opts
		o.trace = true
		res := runSim(seed, o)
		for _, l := range res.trace {
			t.Log(l)
		}
		t.Logf("seed %d: %s; %s", seed, res.params, res.stats)
		if res.err != nil {
			t.Fatalf("seed %d: %v", seed, res.err)
		}
		return
	}

	n := uint64(2000)
	switch {
	case simRace:
		n = 300 // the race detector slows the simulation ~10x
	case testing.Short():
		n = 300
	}
	if s := os.Getenv("URLDISK_SIM_SEEDS"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("URLDISK_SIM_SEEDS=%q: %v", s, err)
		}
		n = v
	}
	first := uint64(1)
	if s := os.Getenv("URLDISK_SIM_START"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("URLDISK_SIM_START=%q: %v", s, err)
		}
		first = v
	}

	type failure struct {
		seed uint64
		err  error
	}
	var (
		mu       sync.Mutex
		failures []failure
		total    simStats
		wg       sync.WaitGroup
		next     = first
	)
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				seed := next
				next++
				mu.Unlock()
				if seed >= first+n {
					return
				}
				res := runSim(seed, opts)
				mu.Lock()
				total.add(&res.stats)
				if res.err != nil {
					failures = append(failures, failure{seed, res.err})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d seeds in %v (%.0f seeds/s)", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	t.Logf("totals: %s", total)

	slices.SortFunc(failures, func(a, b failure) int { return int(a.seed - b.seed) })
	for i, f := range failures {
		if i == simMaxReport {
			t.Errorf("... and %d more failing seeds", len(failures)-i)
			break
		}
		t.Errorf("seed %d: %v\n    replay: "+simReplayCmd, f.seed, f.err, f.seed)
	}
}

// simStats counts what a run exercised, so a green run shows it covered
// the interesting paths.
type simStats struct {
	seeds, steps                          int
	attaches, takeovers, fenceRetries     int
	attachFromSnap, snapshots, gcDeleted  int
	segments, acks, moves, skips          int
	lostResponses, mineAfterLost          int
	fenced, crashes, partitions, timeouts int
	zombieLanded, voidRecords, maxLog     int
	lateDeliveries, staleCopies, rogue    int
	leftoverGaps                          int // crash-leftover gaps Gaps judged (rightly) not lost

	vols, clones, clonesHead, clonesCkpt, clonesSeq, cloneRefused    int
	checkpoints, ckptRemoved, removes, rmVsClone, rmInFlight         int
	gcRuns, gcAborted, gcSnapsDeleted                                int
	gcKeptMarked, gcKeptYoung, gcKeptGuard, createAfterDelete        int
	ckptFenced, ckptRmVsClone, gcSnapRewritten                       int
	clonesOfClones, cloneAttaches, gcKeptForOthers, gcDeletedRemoved int
	clonesDuringGC, gcProtected, gcOrphans                           int
	gcRmCkptMarked, gcRmCkptDeleted                                  int
}

func (s *simStats) add(o *simStats) {
	s.seeds += o.seeds
	s.steps += o.steps
	s.attaches += o.attaches
	s.takeovers += o.takeovers
	s.fenceRetries += o.fenceRetries
	s.attachFromSnap += o.attachFromSnap
	s.snapshots += o.snapshots
	s.gcDeleted += o.gcDeleted
	s.segments += o.segments
	s.acks += o.acks
	s.moves += o.moves
	s.skips += o.skips
	s.lostResponses += o.lostResponses
	s.mineAfterLost += o.mineAfterLost
	s.fenced += o.fenced
	s.crashes += o.crashes
	s.partitions += o.partitions
	s.timeouts += o.timeouts
	s.zombieLanded += o.zombieLanded
	s.voidRecords += o.voidRecords
	s.lateDeliveries += o.lateDeliveries
	s.staleCopies += o.staleCopies
	s.rogue += o.rogue
	s.leftoverGaps += o.leftoverGaps
	s.maxLog = max(s.maxLog, o.maxLog)
	s.vols += o.vols
	s.clones += o.clones
	s.clonesHead += o.clonesHead
	s.clonesCkpt += o.clonesCkpt
	s.clonesSeq += o.clonesSeq
	s.cloneRefused += o.cloneRefused
	s.checkpoints += o.checkpoints
	s.ckptRemoved += o.ckptRemoved
	s.removes += o.removes
	s.rmVsClone += o.rmVsClone
	s.rmInFlight += o.rmInFlight
	s.gcRuns += o.gcRuns
	s.gcAborted += o.gcAborted
	s.gcSnapsDeleted += o.gcSnapsDeleted
	s.gcKeptMarked += o.gcKeptMarked
	s.gcKeptYoung += o.gcKeptYoung
	s.gcKeptGuard += o.gcKeptGuard
	s.createAfterDelete += o.createAfterDelete
	s.ckptFenced += o.ckptFenced
	s.ckptRmVsClone += o.ckptRmVsClone
	s.gcProtected += o.gcProtected
	s.gcOrphans += o.gcOrphans
	s.gcRmCkptMarked += o.gcRmCkptMarked
	s.gcRmCkptDeleted += o.gcRmCkptDeleted
	s.gcSnapRewritten += o.gcSnapRewritten
	s.clonesOfClones += o.clonesOfClones
	s.cloneAttaches += o.cloneAttaches
	s.gcKeptForOthers += o.gcKeptForOthers
	s.gcDeletedRemoved += o.gcDeletedRemoved
	s.clonesDuringGC += o.clonesDuringGC
}

func (s simStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seeds=%d steps=%d attaches=%d takeovers=%d fence-retries=%d attach-from-snapshot=%d snapshots=%d gc-deleted=%d ",
		s.seeds, s.steps, s.attaches, s.takeovers, s.fenceRetries, s.attachFromSnap, s.snapshots, s.gcDeleted)
	fmt.Fprintf(&b, "segments=%d acked=%d moves=%d skips=%d lost-responses=%d mine-after-lost=%d ",
		s.segments, s.acks, s.moves, s.skips, s.lostResponses, s.mineAfterLost)
	fmt.Fprintf(&b, "stale-copies-landed=%d fenced-writers=%d crashes=%d partitions=%d timeouts=%d requests-delivered-2+-attaches-late=%d zombie-creates-landed=%d rogue-records=%d void-records=%d max-log=%d leftover-gaps-not-lost=%d",
		s.staleCopies, s.fenced, s.crashes, s.partitions, s.timeouts, s.lateDeliveries, s.zombieLanded, s.rogue, s.voidRecords, s.maxLog, s.leftoverGaps)
	fmt.Fprintf(&b, " vols=%d clones=%d clones-made-while-gc-ran=%d clones-started: head=%d checkpoint=%d seq=%d of-a-clone=%d refused=%d clone-attaches=%d checkpoints=%d checkpoints-removed=%d (while-a-clone-of-it-ran=%d) checkpoints-refused-fenced=%d ",
		s.vols, s.clones, s.clonesDuringGC, s.clonesHead, s.clonesCkpt, s.clonesSeq, s.clonesOfClones, s.cloneRefused, s.cloneAttaches, s.checkpoints, s.ckptRemoved, s.ckptRmVsClone, s.ckptFenced)
	fmt.Fprintf(&b, "removes=%d (while-a-clone-of-it-ran=%d while-its-requests-flew=%d) gc-runs=%d gc-runs-failed=%d gc-deleted-of-removed-volumes=%d gc-snapshots-deleted=%d gc-snapshots-rewritten=%d gc-removed-checkpoints: marked=%d deleted=%d gc-volumes: protected=%d orphaned=%d ",
		s.removes, s.rmVsClone, s.rmInFlight, s.gcRuns, s.gcAborted, s.gcDeletedRemoved, s.gcSnapsDeleted, s.gcSnapRewritten, s.gcRmCkptMarked, s.gcRmCkptDeleted, s.gcProtected, s.gcOrphans)
	fmt.Fprintf(&b, "gc-kept: marked=%d only-by-other-volumes=%d young=%d guard=%d creates-in-emptied-slots=%d",
		s.gcKeptMarked, s.gcKeptForOthers, s.gcKeptYoung, s.gcKeptGuard, s.createAfterDelete)
	return b.String()
}

// simMaxReport is how many failing seeds a batch lists.
var simMaxReport = func() int {
	if n, err := strconv.Atoi(os.Getenv("URLDISK_SIM_REPORT")); err == nil {
		return n
	}
	return 10
}()

// Known problems: interleavings the real code (internal/volume, as of this
// simulation) gets wrong, or that fall outside the assumptions it makes.
// By default the simulation steers around each of them, so a green run
// says everything else holds; URLDISK_SIM_KNOWN=name,name (or all) lets
// them happen, and the seeds that hit them fail.
//
// Fixed in internal/volume (0eacac3) and now run in the default regime, no
// longer switches: fallback-base (roots get an empty snapshot 0 at Create;
// the base is chosen by snapshot time), time-order (record times are
// clamped monotonic, replay ignores void records' times, the base is the
// newest snapshot whose header time is before the window),
// ckpt-rm-vs-gc and rm-vs-clone (RemoveCheckpoint keeps a copy under
// ckpt-removed/ that GC marks for the grace period; Remove is a tombstone
// that protects the volume's maps for the grace period), rm-orphans
// (prefixes with no descriptor, tombstone or name, all older than the
// grace period, are collected), stale-ckpt (Volume.Checkpoint checks no
// newer fence follows the point before labelling it: stillOwner).
const (
	// GC retention 0 (keep heads and checkpoints only) while clones and
	// checkpoints are made: the pool's point-in-time promise assumes the
	// same retention in GC and pool. Out of contract. Default: retention > 0.
	knownRetention0 = "retention-0"
	// A snapshot key written again after a GC listed it (a zombie's
	// snapshot below the base) is deleted young: harmless, as nothing
	// needs a snapshot there. Default: not reported.
	knownSnapRewrite = "snap-rewrite"
)

var simKnown = []string{knownRetention0, knownSnapRewrite}

func parseKnown(t *testing.T, s string) map[string]bool {
	k := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		switch {
		case n == "":
		case n == "all":
			for _, m := range simKnown {
				k[m] = true
			}
		case slices.Contains(simKnown, n):
			k[n] = true
		default:
			t.Fatalf("URLDISK_SIM_KNOWN: %q is not one of %v (or all)", n, simKnown)
		}
	}
	return k
}
