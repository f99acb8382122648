package volume

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

const (
	takeoverVol  = "takeover"
	takeoverSize = 8 << 20
)

// Byte patterns of the takeover tests; each region is written by one party.
const (
	patA1 = 0xa1 // A, flushed before B attaches: must survive
	patA2 = 0xa2 // A, written before B attaches, never flushed
	patA3 = 0xa3 // A, written and sealed before B attaches, uploads held
	patA4 = 0xa4 // A, after B's fence
	patA5 = 0xa5 // A, after A learned it is fenced
	patB1 = 0xb1 // B, flushed
	patB2 = 0xb2 // B, flushed after A's leftovers landed
)

const (
	offA1, lenA1 = 0, 256 << 10
	offA2, lenA2 = 1 << 20, 8 << 10
	offA3, lenA3 = 1<<20 + 64<<10, 192 << 10
	offB1, lenB1 = 2 << 20, 32 << 10
	offA4, lenA4 = 3 << 20, 512 << 10
	offA5, lenA5 = 4 << 20, 4 << 10
	offB2, lenB2 = 5 << 20, 64 << 10
)

// takeoverFinal is what every attach after the takeover must see: A's
// acknowledged data and B's, and none of A's unacknowledged or post-fence
// writes.
var takeoverFinal = []region{
	{offA1, lenA1, patA1},
	{offA2, lenA2, 0},
	{offA3, lenA3, 0},
	{offB1, lenB1, patB1},
	{offA4, lenA4, 0},
	{offA5, lenA5, 0},
	{offB2, lenB2, patB2},
}

// TestTakeoverTwoProcesses: process A attaches a volume on versitygw
// read-write, flushes some data and keeps writing; process B attaches
// read-write and so fences A. A's next flush must fail with
// blockdev.ErrFenced (and say so), as must every later write and flush of
// A. Nothing A wrote after B's fence may ever be visible, to B or to a fresh
// attach after both exit, even where A's leftovers landed in the log.
func TestTakeoverTwoProcesses(t *testing.T) {
	srv := s3server.Start(t)
	ctx := context.Background()
	pool := initPool(t, openStore(t, srv.URL))
	desc, err := pool.Create(ctx, takeoverVol, CreateOptions{Size: takeoverSize})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{helperPoolEnv + "=" + srv.URL, helperVolEnv + "=" + takeoverVol}
	a := startProc(t, "A", "cmd", env...)
	b := startProc(t, "B", "cmd", env...)
	cmd := func(op string, off, n int64, pat byte) string { return fmt.Sprintf("%s %d %d %x", op, off, n, pat) }

	ra := a.must("open")
	a.must(cmd("write", offA1, lenA1, patA1))
	a.must("flush") // ACK: A1 is durable
	// A keeps writing: small writes that stay in A's open segment.
	a.must(cmd("write", offA2, lenA2, patA2))

	rb := b.must("open") // fences A
	t.Logf("A attached with %s, B with %s", ra.text, rb.text)
	if ra.text == rb.text {
		t.Fatalf("A and B attached with the same epoch (%s)", ra.text)
	}
	b.must(cmd("read", offA1, lenA1, patA1))
	b.must(cmd("read", offA2, lenA2, 0))
	b.must(cmd("write", offB1, lenB1, patB1))
	b.must("flush")

	// A, not yet aware, writes several segments: their uploads race B's
	// log and some may land in slots after B's records.
	if r := a.call(cmd("write", offA4, lenA4, patA4)); !r.ok && !r.fenced {
		t.Fatalf("A's write after the fence failed with something other than ErrFenced: %s", r.text)
	}
	r := a.call("flush")
	if r.ok || !r.fenced || !strings.Contains(r.text, "fenced") {
		t.Fatalf("A's flush after B's fence: ok=%v fenced=%v %q; want ErrFenced saying \"fenced\"", r.ok, r.fenced, r.text)
	}
	t.Logf("A's flush failed as it must: %s", r.text)
	for _, c := range []string{cmd("write", offA5, lenA5, patA5), "flush", cmd("write", offA5, 1, patA5), "flush"} {
		if r := a.call(c); r.ok || !r.fenced {
			t.Fatalf("A after being fenced: %q: ok=%v fenced=%v %s", c, r.ok, r.fenced, r.text)
		}
	}
	if r := a.call("close"); r.ok || !r.fenced {
		t.Fatalf("A's close after being fenced: ok=%v fenced=%v %s", r.ok, r.fenced, r.text)
	}
	a.exit()
	if !strings.Contains(a.stderr.String(), "FENCED") {
		t.Fatalf("A did not log loudly that it was fenced; stderr:\n%s", a.stderr.String())
	}

	// B goes on writing past whatever A left behind.
	b.must(cmd("write", offB2, lenB2, patB2))
	b.must("flush")
	for _, rg := range takeoverFinal {
		b.must(cmd("read", rg.off, rg.n, rg.b))
	}
	b.must("close")
	b.exit()

	voids := countForeignRecords(t, pool.Store(), desc.ID)
	t.Logf("log after the takeover: %d records of the fenced epoch after B's fence", voids)
	v, err := pool.Open(ctx, takeoverVol, Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	expectRegions(t, "fresh read-only attach", v, takeoverFinal)
	v.Close(ctx)
}

// countForeignRecords returns how many data records in the log have an
// epoch older than a fence before them: void leftovers of fenced writers.
func countForeignRecords(t *testing.T, s objstore.Store, id string) int {
	t.Helper()
	ctx := context.Background()
	var keys []string
	if err := s.List(ctx, format.LogPrefix(id), func(oi objstore.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var epoch uint64
	voids := 0
	for _, k := range keys {
		r := readRawRecord(t, s, k)
		switch {
		case r.Type == format.RecordFence && r.Epoch > epoch:
			epoch = r.Epoch
		case r.Type == format.RecordData && r.Epoch < epoch:
			voids++
		}
	}
	return voids
}

// readRawRecord decodes the record object key straight from the store.
func readRawRecord(t *testing.T, s objstore.Store, key string) *format.Record {
	t.Helper()
	b, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	r, err := format.DecodeRecord(b, int64(len(b)))
	if err != nil {
		t.Fatalf("decode %s: %v", key, err)
	}
	return r
}

// TestTakeoverInProcess is TestTakeoverTwoProcesses in one process on mem://
// and file://, with A's uploads held at a gate so that A's leftovers
// deterministically land after B's records: B must skip them, A must be
// fenced, and none of A's unacknowledged or post-fence data may show.
func TestTakeoverInProcess(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"mem", "mem://takeover"},
		{"file", "file://" + t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) { runTakeoverInProcess(t, tc.url) })
	}
}

func runTakeoverInProcess(t *testing.T, url string) {
	ctx := context.Background()
	shared := openStore(t, url)
	poolB := initPool(t, shared)
	desc, err := poolB.Create(ctx, takeoverVol, CreateOptions{Size: takeoverSize})
	if err != nil {
		t.Fatal(err)
	}
	var g gate
	created := make(chan string, 1024) // log keys A created
	storeA := faultstore.New(shared, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op == faultstore.OpPutIfAbsent && isLogKey(key) {
			g.pass()
		}
		return nil
	}, After: func(op faultstore.Op, key string, err error) error {
		if op == faultstore.OpPutIfAbsent && isLogKey(key) && err == nil {
			select {
			case created <- key:
			default:
			}
		}
		return nil
	}})
	poolA, err := OpenPool(ctx, storeA, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{SegmentBytes: 64 << 10, Uploads: 8, IdleFlush: -1, Logger: testLogger(t)}
	fill := func(n int64, b byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = b
		}
		return p
	}

	a, err := poolA.Open(ctx, takeoverVol, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WriteAt(ctx, fill(lenA1, patA1), offA1); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	head := a.w.Prefix() // A's last durable slot
	// A keeps writing; its uploads are held, so nothing more is durable.
	g.close()
	if err := a.WriteAt(ctx, fill(lenA2, patA2), offA2); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteAt(ctx, fill(lenA3, patA3), offA3); err != nil {
		t.Fatal(err)
	}
	// A2+A3 = 200 KiB: three full segments sealed (slots head+1..head+3)
	// and one open one (head+4).
	g.waitHeld(t, 3)

	b, err := poolB.Open(ctx, takeoverVol, opts)
	if err != nil {
		t.Fatal(err)
	}
	if b.Epoch() <= a.Epoch() {
		t.Fatalf("B's epoch %d not after A's %d", b.Epoch(), a.Epoch())
	}
	fenceSeq := b.w.Prefix()
	if fenceSeq != head+1 {
		t.Fatalf("B's fence at slot %d, want %d (right after A's durable head)", fenceSeq, head+1)
	}
	expectRegions(t, "B after attach", b, []region{{offA1, lenA1, patA1}, {offA2, lenA2, 0}, {offA3, lenA3, 0}})
	if err := b.WriteAt(ctx, fill(lenB1, patB1), offB1); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil { // B's data at head+2
		t.Fatal(err)
	}

	// A writes after the fence, still unaware; then its uploads go out.
	if err := a.WriteAt(ctx, fill(lenA4, patA4), offA4); err != nil && !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's write after the fence: %v", err)
	}
	g.open()
	// Let A's record for slot head+3 (free: B wrote only head+1 and
	// head+2) land before A learns it is fenced, as a zombie's would.
	for want := format.LogKey(desc.ID, head+3); ; {
		select {
		case k := <-created:
			if k != want {
				continue
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("A's upload of slot %d did not land", head+3)
		}
		break
	}
	err = a.Flush(ctx)
	if !errors.Is(err, blockdev.ErrFenced) || !strings.Contains(err.Error(), "fenced") {
		t.Fatalf("A's flush after B's fence returned %v, want ErrFenced", err)
	}
	if !a.Fenced() {
		t.Fatal("A does not report itself fenced")
	}
	if err := a.WriteAt(ctx, fill(lenA5, patA5), offA5); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's write after being fenced: %v", err)
	}
	if err := a.Trim(ctx, offA1, 4096); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's trim after being fenced: %v", err)
	}
	if err := a.Flush(ctx); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's second flush after being fenced: %v", err)
	}
	if err := a.ReadAt(ctx, make([]byte, 4096), offA4); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's read after being fenced: %v", err)
	}
	if err := a.Close(ctx); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatalf("A's close after being fenced: %v", err)
	}

	// Slot head+3 was A's and free: A's (void) record landed there.
	r := readRawRecord(t, shared, format.LogKey(desc.ID, head+3))
	if r.Type != format.RecordData || r.Epoch != a.Epoch() || r.Writer != a.w.ID() {
		t.Fatalf("slot %d holds %v epoch %d, want A's leftover data record of epoch %d", head+3, r.Type, r.Epoch, a.Epoch())
	}
	voids := countForeignRecords(t, shared, desc.ID)
	if voids < 1 {
		t.Fatalf("no leftover of A in the log after B's fence; the test lost its point")
	}

	// B's next record goes to head+3: taken by A's leftover, so B must
	// skip it (and any other leftover) and still acknowledge its flush.
	if err := b.WriteAt(ctx, fill(lenB2, patB2), offB2); err != nil {
		t.Fatal(err)
	}
	flushCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.Flush(flushCtx); err != nil {
		t.Fatalf("B's flush past A's leftovers: %v", err)
	}
	b.mu.Lock()
	moves := b.moves
	b.mu.Unlock()
	if moves == 0 {
		t.Fatalf("B never moved past A's leftover in slot %d", head+3)
	}
	expectRegions(t, "B", b, takeoverFinal)
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("A's durable head %d, B's fence %d, %d void leftovers of A, B moved %d times", head, fenceSeq, voids, moves)

	for _, ro := range []bool{true, false} {
		v, err := poolB.Open(ctx, takeoverVol, Options{ReadOnly: ro, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		expectRegions(t, fmt.Sprintf("fresh attach (read-only %v)", ro), v, takeoverFinal)
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
