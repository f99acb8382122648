package agent

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
	"github.com/urldisk/urldisk/internal/volume"
)

// TestTracer: the trace keeps the most recently used pages but lists them
// in the order they were first touched, the order a machine starting on
// the next host needs them in (not most recent last, which would prefetch
// a boot's first pages last).
func TestTracer(t *testing.T) {
	tr := newTracer(100, 3)
	tr.touch(0, 1)     // page 0
	tr.touch(250, 100) // pages 2, 3
	tr.touch(10, 5)    // page 0 again: most recent, still first touched
	if got := tr.snapshot(); !reflect.DeepEqual(got, []uint64{0, 2, 3}) {
		t.Fatalf("snapshot %v, want first-touch order [0 2 3]", got)
	}
	tr.touch(1000, 1) // page 10 evicts the least recent, 2
	if got := tr.snapshot(); !reflect.DeepEqual(got, []uint64{0, 3, 10}) {
		t.Fatalf("after eviction %v, want [0 3 10]", got)
	}
	tr.touch(220, 1) // page 2 again evicts 3; it is touched anew: last
	if got := tr.snapshot(); !reflect.DeepEqual(got, []uint64{0, 10, 2}) {
		t.Fatalf("after a page came back %v, want [0 10 2]", got)
	}
	big := newTracer(1, 1<<20)
	big.touch(0, 1<<20) // a huge request records at most maxTouchPages
	if n := len(big.snapshot()); n != maxTouchPages {
		t.Fatalf("huge request recorded %d pages", n)
	}
	var none *tracer
	none.touch(0, 10)
	if none.snapshot() != nil {
		t.Fatal("nil tracer recorded")
	}
}

func TestDevice(t *testing.T) {
	ctx := context.Background()
	disk := nbdtest.NewRAMDisk(1<<20, 4096, false)
	m := newMetrics(nil).forMachine("m")
	var firsts int
	d := newDevice(disk, m, newTracer(4096, 16), func(time.Time) { firsts++ })
	if !d.FirstIO().IsZero() {
		t.Fatal("first I/O before any")
	}
	if err := d.WriteAt(ctx, make([]byte, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadAt(ctx, make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if firsts != 1 || d.FirstIO().IsZero() {
		t.Fatalf("first-I/O callback ran %d times", firsts)
	}
	if got := d.trace.snapshot(); !reflect.DeepEqual(got, []uint64{1, 2, 0}) {
		t.Fatalf("trace %v", got)
	}
	disk.InjectError(nbdtest.OpWrite, blockdev.ErrFenced)
	if err := d.WriteAt(ctx, []byte{1}, 0); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatal(err)
	}
	if v := counterValue(m.requests.WithLabelValues("write")); v != 2 {
		t.Fatalf("write requests %v", v)
	}
	if v := counterValue(m.errors.WithLabelValues("write")); v != 1 {
		t.Fatalf("write errors %v", v)
	}
	if v := counterValue(m.bytes.WithLabelValues("write")); v != 8192 {
		t.Fatalf("bytes written %v", v)
	}
}

// TestTraceRanges: a trace becomes prefetch ranges in its own order for
// its first pages (a boot's), adjacent pages merged; later, larger batches
// are sorted so scattered pages of a working set merge into larger GETs.
func TestTraceRanges(t *testing.T) {
	// The first batch (16 pages) in first-touch order: 40..42, 7, 3, 8 and
	// 41 again; sorted and merged within the batch.
	pages := []uint64{40, 41, 42, 7, 3, 8, 41}
	want := []volume.Range{{Off: 30, Len: 10}, {Off: 70, Len: 20}, {Off: 400, Len: 30}}
	if got := traceRanges(pages, 10); !reflect.DeepEqual(got, want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	// A batch never merges into the one before it, and the batches keep
	// the trace's order: 16 pages from 1000 down, then 32 pages from 0.
	pages = nil
	for i := range uint64(firstTraceBatch) {
		pages = append(pages, 1000-i)
	}
	for i := range uint64(2 * firstTraceBatch) {
		pages = append(pages, 2*firstTraceBatch-1-i)
	}
	want = []volume.Range{{Off: 1000 - firstTraceBatch + 1, Len: firstTraceBatch}, {Off: 0, Len: 2 * firstTraceBatch}}
	if got := traceRanges(pages, 1); !reflect.DeepEqual(got, want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	// A long run is cut at maxTraceRun pages: 112 scattered pages fill the
	// first three batches (16, 32, 64), the fourth (128) is one run.
	pages = nil
	for i := range uint64(112) {
		pages = append(pages, 10000+2*i)
	}
	for i := range uint64(128) {
		pages = append(pages, i)
	}
	got := traceRanges(pages, 1)
	want = []volume.Range{{Off: 0, Len: maxTraceRun}, {Off: maxTraceRun, Len: 128 - maxTraceRun}}
	if len(got) != 112+2 || !reflect.DeepEqual(got[112:], want) {
		t.Fatalf("a run of 128 pages gave %v (of %d ranges), want %v", got[min(112, len(got)):], len(got), want)
	}
}
