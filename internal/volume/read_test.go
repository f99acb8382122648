package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
)

// TestConcurrentSequentialReads writes a volume out of order (so records
// hold their volume ranges shuffled, like several writers' streams), then
// reads it back with a fresh cache by eight concurrent sequential readers
// (shared aligned-window GETs, fetches joined in progress, background cache
// fills), again warm, and with random unaligned reads; every byte must match.
func TestConcurrentSequentialReads(t *testing.T) {
	ctx := context.Background()
	const size = 24 << 20
	p := initPool(t, openStore(t, "mem://seqreads"))
	// 256 KiB writes in shuffled order, with a hole left unwritten.
	model := writeModel(t, p, "v", size, true, 5<<20)
	rng := rand.New(rand.NewPCG(11, 12))

	c := openCache(t, t.TempDir(), 64<<20)
	defer c.Close()
	v, err := p.Open(ctx, "v", Options{ReadOnly: true, Cache: c, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	readSeq(t, v, model, 0, size, 1<<20, 8) // cold
	readSeq(t, v, model, 0, size, 1<<20, 8) // warm
	if t.Failed() {
		return
	}
	// Random unaligned reads, a fresh reader with its own cache.
	c2 := openCache(t, t.TempDir(), 64<<20)
	defer c2.Close()
	v2, err := p.Open(ctx, "v", Options{ReadOnly: true, Cache: c2, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close(ctx)
	for range 300 {
		n := 1 + rng.IntN(300<<10)
		off := rng.Int64N(size - int64(n))
		buf := make([]byte, n)
		if err := v2.ReadAt(ctx, buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, model[off:off+int64(n)]) {
			t.Fatalf("random read [%d,+%d) differs at +%d", off, n, firstDiff(buf, model[off:off+int64(n)]))
		}
	}
}

func TestSeqDetectorToleratesReordering(t *testing.T) {
	var d seqDetector
	d.init()
	if d.follows(0, 1<<20) {
		t.Fatal("first read counted as sequential")
	}
	// A stream at queue depth 4 whose reads enter out of order.
	order := []int64{2, 1, 3, 5, 4, 7, 6, 8}
	hits := 0
	for _, i := range order {
		if d.follows(i<<20, (i+1)<<20) {
			hits++
		}
	}
	if hits < 6 {
		t.Fatalf("%d of %d reordered sequential reads recognised", hits, len(order))
	}
	if d.follows(100<<20, 101<<20) {
		t.Fatal("a jump counted as sequential")
	}
}
