package journal

// Deterministic simulation of the log and fencing protocol (DESIGN.md §5).
//
// One seed is one interleaving: a simulated object store with
// create-if-absent, every store operation a message that the seeded
// scheduler delivers in any order, injected faults (creates that fail
// without applying, creates that apply but lose their response, failing
// reads, timed-out requests that still land later), 2–4 writers that attach
// over time (takeovers while the old writer is active, crashes that drop or
// keep their in-flight requests, partitioned zombies whose requests arrive
// after several later writers), snapshots and GC of records below them, and
// (in some seeds) rogue records at the log head that replay must void: stale
// fences, data of the current epoch from a writer that does not own it, data
// of an older epoch. There are no goroutines and no clocks inside a seed;
// seeds run in parallel.
//
// Checked after every attach and at the end: a replay from scratch (of every
// record ever written, GC'd ones included) and a replay from the newest
// snapshot agree, and so does the attacher's own replay; journal.Replay's
// verdicts match an independent statement of DESIGN.md §5's rules; I1
// (every acknowledged segment's blocks read its value or a newer record's),
// I2 (every visible value comes from an applied record), I3 (no writer
// acknowledged a slot above a newer epoch's fence; none of its records there
// applies), no gap below an acknowledged slot, replay never errors, I4 (GC
// deleted no fence), snapshots equal the replay at their seq, a fenced writer
// acknowledges nothing further, every writer still attached at the end got
// everything acknowledged, and what each writer believed about its slots
// (mine / void) is what the log holds.
//
//	go test -run TestSimulation ./internal/journal                       # URLDISK_SIM_SEEDS seeds (default 2000)
//	URLDISK_SIM_SEED=1234 go test -run TestSimulation ./internal/journal -v  # one seed, with a trace
//
// URLDISK_SIM_START sets the first seed of a batch (default 1).
// URLDISK_SIM_UNSAFE_GC=1 lets GC delete records below a snapshot while a
// writer may still create them (no grace period): expected to fail, it shows
// why I5's grace period is load-bearing.

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
	unsafeGC := os.Getenv("URLDISK_SIM_UNSAFE_GC") != ""
	if s := os.Getenv("URLDISK_SIM_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("URLDISK_SIM_SEED=%q: %v", s, err)
		}
		res := runSim(seed, simOpts{trace: true, unsafeGC: unsafeGC})
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
				res := runSim(seed, simOpts{unsafeGC: unsafeGC})
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
		if i == 10 {
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
	s.maxLog = max(s.maxLog, o.maxLog)
}

func (s simStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seeds=%d steps=%d attaches=%d takeovers=%d fence-retries=%d attach-from-snapshot=%d snapshots=%d gc-deleted=%d ",
		s.seeds, s.steps, s.attaches, s.takeovers, s.fenceRetries, s.attachFromSnap, s.snapshots, s.gcDeleted)
	fmt.Fprintf(&b, "segments=%d acked=%d moves=%d skips=%d lost-responses=%d mine-after-lost=%d ",
		s.segments, s.acks, s.moves, s.skips, s.lostResponses, s.mineAfterLost)
	fmt.Fprintf(&b, "stale-copies-landed=%d fenced-writers=%d crashes=%d partitions=%d timeouts=%d requests-delivered-2+-attaches-late=%d zombie-creates-landed=%d rogue-records=%d void-records=%d max-log=%d",
		s.staleCopies, s.fenced, s.crashes, s.partitions, s.timeouts, s.lateDeliveries, s.zombieLanded, s.rogue, s.voidRecords, s.maxLog)
	return b.String()
}
