package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

func storedLogBytes(t *testing.T, s objstore.Store) int64 {
	var n int64
	if err := s.List(context.Background(), format.VolsPrefix, func(oi objstore.ObjectInfo) error {
		n += oi.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOverwriteCompactGC overwrites a volume's worth of random blocks ten times; after
// compaction and GC the stored bytes are within 1.5x of the live data, and
// the data reads back exactly.
func TestOverwriteCompactGC(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store := &modTimeStore{Store: openStore(t, "file://"+t.TempDir()), clock: clock, mtime: map[string]time.Time{}}
	p, err := InitPool(ctx, store, PoolOptions{Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// URLDISK_OVERWRITE_MIB scales it up (BENCHMARKS.md used 1024).
	size, block := 16<<20, 64<<10
	if s := os.Getenv("URLDISK_OVERWRITE_MIB"); s != "" {
		mib, err := strconv.Atoi(s)
		if err != nil || mib <= 0 {
			t.Fatalf("URLDISK_OVERWRITE_MIB=%q", s)
		}
		size = mib << 20
	}
	if _, err := p.Create(ctx, "ow", CreateOptions{Size: uint64(size)}); err != nil {
		t.Fatal(err)
	}
	v, err := p.Open(ctx, "ow", Options{SegmentBytes: 1 << 20, SnapshotEvery: 16, IdleFlush: -1, Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	model := make([]byte, size)
	buf := make([]byte, block)
	for pass := 0; pass < 10; pass++ {
		// Random blocks with replacement: records end up partly live.
		for range size / block {
			b := rng.IntN(size / block)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if err := v.WriteAt(ctx, buf, int64(b*block)); err != nil {
				t.Fatal(err)
			}
			copy(model[b*block:], buf)
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Hour)
	gcOpts := GCOptions{Grace: time.Hour, Retention: -1}
	if _, err := p.GC(ctx, gcOpts); err != nil {
		t.Fatal(err)
	}
	before := storedLogBytes(t, store)
	// Each run copies at most CompactOptions.MaxBytes; repeat as the
	// background loop would.
	var st CompactStats
	for range 20 {
		s, err := v.Compact(ctx, CompactOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st.Records += s.Records
		st.LiveBytes += s.LiveBytes
		st.DeadBytes += s.DeadBytes
		if s.Records == 0 {
			break
		}
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	if _, err := p.GC(ctx, gcOpts); err != nil {
		t.Fatal(err)
	}
	after := storedLogBytes(t, store)
	t.Logf("stored after 10 overwrites + GC: %.2fx live; compaction rewrote %d records (%d live, %d dead bytes); after compaction + GC: %.2fx live",
		float64(before)/float64(size), st.Records, st.LiveBytes, st.DeadBytes, float64(after)/float64(size))
	if st.Records == 0 {
		t.Fatal("compaction found nothing to do on randomly overwritten records")
	}
	if float64(after) > 1.5*float64(size) {
		t.Fatalf("stored %d bytes for %d live: more than 1.5x", after, size)
	}
	ro, err := p.Open(ctx, "ow", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	got := make([]byte, size)
	if err := ro.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatalf("data differs after compaction at %d", firstDiff(got, model))
	}
}
