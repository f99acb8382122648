package volume

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// The crash test's volume and workload. Write i of a run is a pure function
// of (seed, i), so the parent can recompute every write a killed child made.
const (
	crashVolSize = 8 << 20
	crashMaxLen  = 200 << 10
	crashVolName = "crash"
)

type crashOpKind int

const (
	crashWrite crashOpKind = iota
	crashTrim
	crashZero
)

type crashOp struct {
	i     int64
	kind  crashOpKind
	off   int64
	n     int64
	flush bool // the writer flushes (and then prints ACK i) after this op
}

// crashOpAt returns write i of the workload of seed.
func crashOpAt(seed uint64, i int64) crashOp {
	rng := rand.New(rand.NewPCG(seed, uint64(i)^0x5851f42d4c957f2d))
	op := crashOp{i: i}
	switch k := rng.IntN(100); {
	case k < 8:
		op.kind = crashTrim
	case k < 12:
		op.kind = crashZero
	}
	switch rng.IntN(4) {
	case 0:
		op.n = 1 + rng.Int64N(16) // sub-block
	case 1:
		op.n = 4096 * (1 + rng.Int64N(4))
	case 2:
		op.n = 1 + rng.Int64N(70000)
	default:
		op.n = 1 + rng.Int64N(crashMaxLen)
	}
	op.off = rng.Int64N(crashVolSize - op.n + 1)
	if rng.IntN(2) == 0 {
		op.off &^= 4095
	}
	op.flush = rng.IntN(4) == 0
	return op
}

func (op crashOp) covers(pos int64) bool { return pos >= op.off && pos < op.off+op.n }

// crashByte is the byte write i of seed puts at volume position pos.
func crashByte(seed uint64, i, pos int64) byte {
	h := seed ^ uint64(i)*0x9e3779b97f4a7c15 ^ uint64(pos>>3)*0xc2b2ae3d27d4eb4f
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return byte(h >> (8 * (pos & 7)))
}

// value is what op leaves at pos (which it must cover).
func (op crashOp) value(seed uint64, pos int64) byte {
	if op.kind != crashWrite {
		return 0
	}
	return crashByte(seed, op.i, pos)
}

// apply performs op on the image img.
func (op crashOp) apply(seed uint64, img []byte) {
	dst := img[op.off : op.off+op.n]
	if op.kind != crashWrite {
		clear(dst)
		return
	}
	for j := range dst {
		dst[j] = crashByte(seed, op.i, op.off+int64(j))
	}
}

// nextFlushPoint returns the first i >= from after which the writer flushes.
func nextFlushPoint(seed uint64, from int64) int64 {
	for i := from; ; i++ {
		if crashOpAt(seed, i).flush {
			return i
		}
	}
}

// verifyCrash checks a volume image read after a writer running writes
// start.. was killed: base is the volume before the writer started, every
// write <= lastAck was acknowledged, and no write after maxIssued was
// issued. Each byte must hold the newest acknowledged write to it (or base),
// or the value of a later, unacknowledged write to it. It returns how many
// bytes came from such later writes.
func verifyCrash(got, base []byte, seed uint64, start, lastAck, maxIssued int64) (int, error) {
	exp := bytes.Clone(base)
	for i := start; i <= lastAck; i++ {
		crashOpAt(seed, i).apply(seed, exp)
	}
	var later []crashOp
	for i := lastAck + 1; i <= maxIssued; i++ {
		later = append(later, crashOpAt(seed, i))
	}
	bad, fromLater := 0, 0
	var first string
	for pos := range got {
		if got[pos] == exp[pos] {
			continue
		}
		ok := false
		for _, op := range later {
			if op.covers(int64(pos)) && op.value(seed, int64(pos)) == got[pos] {
				ok = true
				break
			}
		}
		if ok {
			fromLater++
			continue
		}
		bad++
		if first == "" {
			first = describeCrashByte(got, base, seed, start, lastAck, maxIssued, int64(pos))
		}
	}
	if bad > 0 {
		return fromLater, fmt.Errorf("%d bytes hold neither the newest acknowledged write nor a later one (writes %d..%d, last ACK %d); first: %s",
			bad, start, maxIssued, lastAck, first)
	}
	return fromLater, nil
}

func describeCrashByte(got, base []byte, seed uint64, start, lastAck, maxIssued, pos int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "byte %d is %#02x; before the run it was %#02x", pos, got[pos], base[pos])
	for i := maxIssued; i >= start; i-- {
		op := crashOpAt(seed, i)
		if !op.covers(pos) {
			continue
		}
		tag := "acked"
		if i > lastAck {
			tag = "unacked"
		}
		match := ""
		if op.value(seed, pos) == got[pos] {
			match = " <- matches"
		}
		fmt.Fprintf(&b, "; %s write %d (kind %d, [%d,+%d)) wrote %#02x%s", tag, i, op.kind, op.off, op.n, op.value(seed, pos), match)
	}
	return b.String()
}

// crashOptions are the volume options of the crash writer: small segments
// and a short idle flush, so a run writes many records and unacknowledged
// writes are sometimes durable; frequent snapshots, so replay after a kill
// starts from one.
func crashOptions() Options {
	return Options{SegmentBytes: 64 << 10, BufferBytes: 1 << 20, Uploads: 4, IdleFlush: 10 * time.Millisecond, SnapshotEvery: 16}
}

// crashWriterMain is the crash helper: it attaches read-write and runs the
// workload from write START on, printing "READY <epoch>" once attached and
// "ACK <i>" after every successful flush, until it is killed.
func crashWriterMain() int {
	ctx := context.Background()
	log := helperLogger()
	fail := func(format string, args ...any) int {
		fmt.Printf(helperTag+"ERR "+format+"\n", args...)
		return 1
	}
	seed, err := strconv.ParseUint(os.Getenv(helperSeedEnv), 10, 64)
	if err != nil {
		return fail("seed: %v", err)
	}
	start, err := strconv.ParseInt(os.Getenv(helperStartEnv), 10, 64)
	if err != nil {
		return fail("start: %v", err)
	}
	pool, err := helperOpenPool(ctx, log)
	if err != nil {
		return fail("open pool: %v", err)
	}
	c, err := openCacheOrNil(os.Getenv(helperCacheEnv))
	if err != nil {
		return fail("open cache: %v", err)
	}
	o := crashOptions()
	o.Logger = log
	if c != nil {
		o.Cache = c
	}
	v, err := pool.Open(ctx, os.Getenv(helperVolEnv), o)
	if err != nil {
		return fail("open volume: %v", err)
	}
	fmt.Printf(helperTag+"READY %d\n", v.Epoch())
	buf := make([]byte, crashMaxLen)
	// Bounded, in case the parent never kills us.
	deadline := time.Now().Add(2 * time.Minute)
	for i := start; time.Now().Before(deadline); i++ {
		op := crashOpAt(seed, i)
		var err error
		switch op.kind {
		case crashWrite:
			p := buf[:op.n]
			for j := range p {
				p[j] = crashByte(seed, i, op.off+int64(j))
			}
			err = v.WriteAt(ctx, p, op.off)
		case crashTrim:
			err = v.Trim(ctx, op.off, op.n)
		case crashZero:
			err = v.WriteZeroes(ctx, op.off, op.n)
		}
		if err != nil {
			return fail("write %d: %v", i, err)
		}
		if op.flush {
			if err := v.Flush(ctx); err != nil {
				return fail("flush after write %d: %v", i, err)
			}
			fmt.Printf(helperTag+"ACK %d\n", i)
		}
	}
	return fail("not killed within the deadline")
}

// TestCrashKill9 runs the crash writer in a child process, SIGKILLs it at a
// random moment (right after an ACK, mid-burst, or even during attach),
// deletes its cache and checks, with a read-only and then a read-write
// (fencing) attach, that every acknowledged write survived and no byte holds
// an older write or garbage. The same volume continues across kills, so each
// new writer fences a dead one. Replay the workload with URLDISK_CRASH_SEED.
func TestCrashKill9(t *testing.T) {
	srv := s3server.Start(t)
	cases := []struct {
		name  string
		url   string
		kills int
	}{
		{"file", "file://" + t.TempDir(), 25},
		{"s3", srv.URL, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			if s := os.Getenv("URLDISK_CRASH_SEED"); s != "" {
				seed, _ = strconv.ParseUint(s, 10, 64)
			}
			t.Logf("seed %d (replay the workload with URLDISK_CRASH_SEED=%d)", seed, seed)
			runCrash(t, tc.url, seed, tc.kills, tc.name == "file")
		})
	}
}

func runCrash(t *testing.T, url string, seed uint64, kills int, exactRO bool) {
	ctx := context.Background()
	pool := initPool(t, openStore(t, url))
	desc, err := pool.Create(ctx, crashVolName, CreateOptions{Size: crashVolSize})
	if err != nil {
		t.Fatal(err)
	}
	krng := rand.New(rand.NewPCG(seed, 0xc4a5))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	base := make([]byte, crashVolSize)
	start := int64(0)
	lastEpoch := uint64(0)
	totalAcked, withData, unackedSeen := int64(0), 0, 0
	began := time.Now()
	for k := 0; k < kills; k++ {
		p := startProc(t, fmt.Sprintf("crash-writer-%d", k), "crash",
			helperPoolEnv+"="+url, helperVolEnv+"="+crashVolName,
			helperSeedEnv+"="+strconv.FormatUint(seed, 10), helperStartEnv+"="+strconv.FormatInt(start, 10),
			helperCacheEnv+"="+cacheDir)

		// Child state, from its output.
		ready, epoch := false, uint64(0)
		lastAck, acks := start-1, 0
		var errLine string
		handle := func(l string) {
			switch {
			case strings.HasPrefix(l, "READY "):
				ready = true
				epoch, _ = strconv.ParseUint(strings.TrimPrefix(l, "READY "), 10, 64)
			case strings.HasPrefix(l, "ACK "):
				i, err := strconv.ParseInt(strings.TrimPrefix(l, "ACK "), 10, 64)
				// The writer flushes at every flush point of the workload.
				if err != nil || i != nextFlushPoint(seed, lastAck+1) {
					t.Errorf("kill %d: ACK line %q after ACK %d: not the next flush point", k, l, lastAck)
				}
				lastAck = i
				acks++
			case strings.HasPrefix(l, "ERR "):
				errLine = l
			}
		}
		mode := krng.IntN(4)
		// await reads output until cond holds; false if the child exited.
		await := func(cond func() bool) bool {
			timeout := time.After(60 * time.Second)
			for !cond() {
				select {
				case l, ok := <-p.lines:
					if !ok {
						return false
					}
					handle(l)
				case <-timeout:
					t.Fatalf("kill %d (mode %d): child made no progress within 60s (ready %v, %d ACKs, last %d); stderr and goroutines:\n%s",
						k, mode, ready, acks, lastAck, p.dump())
				}
			}
			return true
		}

		alive := true
		switch mode {
		case 0: // right after the n-th ACK
			n := 1 + krng.IntN(4)
			alive = await(func() bool { return acks >= n || errLine != "" })
		case 1: // a random moment after attach: usually mid-burst
			alive = await(func() bool { return ready || errLine != "" })
			time.Sleep(time.Duration(krng.IntN(300)) * time.Millisecond)
		case 2: // shortly after the n-th ACK
			n := 1 + krng.IntN(3)
			alive = await(func() bool { return acks >= n || errLine != "" })
			time.Sleep(time.Duration(krng.IntN(15000)) * time.Microsecond)
		case 3: // soon after start: sometimes during attach
			time.Sleep(time.Duration(krng.IntN(150)) * time.Millisecond)
		}
		rest := p.kill()
		for _, l := range rest {
			handle(l)
		}
		if errLine != "" || !alive {
			t.Fatalf("kill %d: writer failed before it was killed: %q; stderr:\n%s", k, errLine, p.stderr.String())
		}
		if ready && epoch <= lastEpoch {
			t.Fatalf("kill %d: writer attached with epoch %d, not after epoch %d", k, epoch, lastEpoch)
		}
		if ready {
			lastEpoch = epoch
		}
		maxIssued := start - 1 // nothing is written before READY
		if ready {
			maxIssued = nextFlushPoint(seed, lastAck+1)
		}
		if acks > 0 {
			withData++
		}
		totalAcked += lastAck - start + 1

		// The cache is disposable: verify from the object store alone.
		if err := os.RemoveAll(cacheDir); err != nil {
			t.Fatal(err)
		}
		ro, err := pool.Open(ctx, crashVolName, Options{ReadOnly: true, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("kill %d: read-only attach: %v", k, err)
		}
		gotRO := readAll(t, ro)
		ro.Close(ctx)
		later, err := verifyCrash(gotRO, base, seed, start, lastAck, maxIssued)
		if err != nil {
			t.Fatalf("kill %d (mode %d), read-only attach: %v", k, mode, err)
		}
		if later > 0 {
			unackedSeen++
		}
		got := gotRO
		// A read-write attach fences the dead writer. (On file:// the dead
		// writer can leave nothing behind that lands later, so skipping it
		// now and then lets the next writer fence the dead one itself.)
		if !exactRO || k%2 == 0 {
			rw, err := pool.Open(ctx, crashVolName, Options{IdleFlush: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("kill %d: read-write attach: %v", k, err)
			}
			if rw.Epoch() <= lastEpoch {
				t.Fatalf("kill %d: read-write attach got epoch %d, not after %d", k, rw.Epoch(), lastEpoch)
			}
			lastEpoch = rw.Epoch()
			got = readAll(t, rw)
			if err := rw.Close(ctx); err != nil {
				t.Fatalf("kill %d: close: %v", k, err)
			}
			if _, err := verifyCrash(got, base, seed, start, lastAck, maxIssued); err != nil {
				t.Fatalf("kill %d (mode %d), read-write attach: %v", k, mode, err)
			}
			if exactRO && !bytes.Equal(got, gotRO) {
				t.Fatalf("kill %d: read-write attach sees different data than read-only at byte %d", k, firstDiff(got, gotRO))
			}
		}
		t.Logf("kill %d: mode %d, epoch %d, writes %d..%d, %d ACKs (last %d)", k, mode, epoch, start, maxIssued, acks, lastAck)
		base = got
		start = max(maxIssued, lastAck) + 1
	}
	var recs int
	_ = pool.Store().List(ctx, format.LogPrefix(desc.ID), func(objstore.ObjectInfo) error { recs++; return nil })
	t.Logf("%d kills in %v: %d kills after ACKs, %d acknowledged writes, %d log records; unacknowledged writes durable after %d kills",
		kills, time.Since(began).Round(time.Millisecond), withData, totalAcked, recs, unackedSeen)
	if withData < kills/3 {
		t.Fatalf("only %d of %d writers got an ACK before the kill: the test checks too little", withData, kills)
	}
}

// TestCrashVerifier checks that verifyCrash, the crash test's judge, accepts
// what it must and catches a lost acknowledged write, a byte of an older
// write and garbage.
func TestCrashVerifier(t *testing.T) {
	const seed = 42
	base := make([]byte, crashVolSize)
	crashOpAt(seed, 0).apply(seed, base) // something to overwrite
	// The last acknowledged op: a flush point whose op is a real write.
	lastAck := nextFlushPoint(seed, 20)
	for op := crashOpAt(seed, lastAck); op.kind != crashWrite || op.n < 64; op = crashOpAt(seed, lastAck) {
		lastAck = nextFlushPoint(seed, lastAck+1)
	}
	maxIssued := nextFlushPoint(seed, lastAck+1)
	image := func(to int64) []byte {
		img := bytes.Clone(base)
		for i := int64(1); i <= to; i++ {
			crashOpAt(seed, i).apply(seed, img)
		}
		return img
	}
	if _, err := verifyCrash(image(lastAck), base, seed, 1, lastAck, maxIssued); err != nil {
		t.Fatalf("exact acknowledged image rejected: %v", err)
	}
	if _, err := verifyCrash(image(maxIssued), base, seed, 1, lastAck, maxIssued); err != nil {
		t.Fatalf("image with the unacknowledged writes rejected: %v", err)
	}
	lost := image(lastAck - 1) // the last acknowledged write is missing
	if _, err := verifyCrash(lost, base, seed, 1, lastAck, maxIssued); err == nil {
		t.Fatal("a lost acknowledged write was not detected")
	} else {
		t.Logf("lost write: %v", err)
	}
	op := crashOpAt(seed, lastAck)
	garbage := image(lastAck)
	garbage[op.off+op.n/2] ^= 0xff
	if _, err := verifyCrash(garbage, base, seed, 1, lastAck, maxIssued); err == nil {
		t.Fatal("a garbage byte was not detected")
	}
}
