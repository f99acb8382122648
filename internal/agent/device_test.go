package agent

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

func TestTracer(t *testing.T) {
	tr := newTracer(100, 3)
	tr.touch(0, 1)     // page 0
	tr.touch(250, 100) // pages 2, 3
	tr.touch(10, 5)    // page 0 again: most recent
	if got := tr.snapshot(); !reflect.DeepEqual(got, []uint64{2, 3, 0}) {
		t.Fatalf("snapshot %v", got)
	}
	tr.touch(1000, 1) // page 10 evicts the least recent, 2
	if got := tr.snapshot(); !reflect.DeepEqual(got, []uint64{3, 0, 10}) {
		t.Fatalf("after eviction %v", got)
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
	select {
	case <-d.Fenced():
		t.Fatal("fenced too early")
	default:
	}
	disk.InjectError(nbdtest.OpWrite, blockdev.ErrFenced)
	if err := d.WriteAt(ctx, []byte{1}, 0); !errors.Is(err, blockdev.ErrFenced) {
		t.Fatal(err)
	}
	select {
	case <-d.Fenced():
	default:
		t.Fatal("ErrFenced did not close Fenced()")
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
