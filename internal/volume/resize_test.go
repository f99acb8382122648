package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// TestResize grows a volume between writes and checks that every view
// orders the size with the writes: the head, a takeover, a checkpoint and a
// point-in-time read before the resize, a clone, a restore, verify and gc.
func TestResize(t *testing.T) {
	ctx := context.Background()
	p := initPool(t, openStore(t, "file://"+t.TempDir()))
	const old, grown = 1 << 20, 3 << 20
	if _, err := p.Create(ctx, "v", CreateOptions{Size: old}); err != nil {
		t.Fatal(err)
	}
	// SnapshotEvery 1: snapshots land on each side of the resize.
	v, err := p.Open(ctx, "v", Options{Logger: testLogger(t), SnapshotEvery: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, fill('a', 4096), old-4096); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, fill('x', 4096), old); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write beyond the size before the resize: %v, want ErrOutOfRange", err)
	}
	before, err := v.Checkpoint(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Resize(ctx, old/2); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v, want ErrInvalid", err)
	}
	if err := v.Resize(ctx, old+100); !errors.Is(err, ErrInvalid) {
		t.Fatalf("size not a multiple of the block size: %v, want ErrInvalid", err)
	}
	if err := v.Resize(ctx, grown); err != nil {
		t.Fatal(err)
	}
	if v.Size() != grown {
		t.Fatalf("size after resize %d, want %d", v.Size(), grown)
	}
	if got := mustRead(t, v, old, 8192); !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatal("bytes beyond the old size are not zeros after the resize")
	}
	if err := v.WriteAt(ctx, fill('b', 4096), grown-4096); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// A takeover replays the resize (or a snapshot after it).
	w2, err := p.Open(ctx, "v", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if w2.Size() != grown {
		t.Fatalf("size after takeover %d, want %d", w2.Size(), grown)
	}
	if got := mustRead(t, w2, grown-4096, 4096); !bytes.Equal(got, fill('b', 4096)) {
		t.Fatal("write beyond the old size lost across takeover")
	}
	v.Close(ctx)
	// Views before the resize have the old size.
	for _, pt := range []Point{{Label: "before"}, {Seq: before.Seq, HasSeq: true}} {
		ro, err := p.OpenAt(ctx, "v", pt, Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if ro.Size() != old {
			t.Fatalf("point %s: size %d, want %d", pt, ro.Size(), old)
		}
		if got := mustRead(t, ro, old-4096, 4096); !bytes.Equal(got, fill('a', 4096)) {
			t.Fatalf("point %s reads wrong data", pt)
		}
		ro.Close(ctx)
	}
	if _, err := p.Clone(ctx, "v", Point{Label: "before"}, "kid"); err != nil {
		t.Fatal(err)
	}
	kid, err := p.Open(ctx, "kid", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if kid.Size() != old {
		t.Fatalf("clone of a checkpoint before the resize: size %d, want %d", kid.Size(), old)
	}
	kid.Close(ctx)
	if _, err := p.Clone(ctx, "v", Point{}, "kid2"); err != nil {
		t.Fatal(err)
	}
	kid2, err := p.Open(ctx, "kid2", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if kid2.Size() != grown {
		t.Fatalf("clone of the head: size %d, want %d", kid2.Size(), grown)
	}
	kid2.Close(ctx)
	rep, err := p.Verify(ctx, "v", VerifyOptions{})
	if err != nil {
		t.Fatalf("verify after resize: %v", err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("verify after resize: %v", rep.Problems)
	}
	if _, err := p.GC(ctx, GCOptions{}); err != nil {
		t.Fatalf("gc after resize: %v", err)
	}
	if got := mustRead(t, w2, grown-4096, 4096); !bytes.Equal(got, fill('b', 4096)) {
		t.Fatal("data lost after gc")
	}
	// Restore to the checkpoint brings back its size.
	if _, err := w2.Restore(ctx, Point{Label: "before"}); err != nil {
		t.Fatal(err)
	}
	if w2.Size() != old {
		t.Fatalf("size after restore to before the resize %d, want %d", w2.Size(), old)
	}
	if err := w2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ro, err := p.Open(ctx, "v", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	if ro.Size() != old {
		t.Fatalf("replayed restore: size %d, want %d", ro.Size(), old)
	}
}

// TestModelResize runs random writes, zeroes, reads, flushes, takeovers and
// resizes against a byte slice that grows with the volume: writes past the
// current end are refused and change nothing, the grown tail reads as
// zeros, and every takeover (and a cache-less read-only attach at the end)
// sees the model's size and bytes. Seed: URLDISK_MODEL_SEED.
func TestModelResize(t *testing.T) {
	for name, url := range backends(t) {
		t.Run(name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			if s := os.Getenv("URLDISK_MODEL_SEED"); s != "" {
				seed, _ = strconv.ParseUint(s, 10, 64)
			}
			t.Logf("seed %d (replay with URLDISK_MODEL_SEED=%d)", seed, seed)
			n := 600
			if name == "s3" {
				n = 200
			}
			runModelResize(t, url, seed, n)
		})
	}
}

func runModelResize(t *testing.T, url string, seed uint64, nops int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, seed^0x51ed27))
	p := initPool(t, openStore(t, url))
	const maxSize = 8 << 20
	if _, err := p.Create(ctx, "m", CreateOptions{Size: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	model := make([]byte, 256<<10)
	o := Options{SegmentBytes: 64 << 10, Uploads: 4, SnapshotEvery: 3, IdleFlush: 5 * time.Millisecond, Logger: testLogger(t)}
	v, err := p.Open(ctx, "m", o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { v.Close(ctx) }()
	for i := range nops {
		switch op := rng.IntN(20); {
		case op < 8:
			n := 1 + rng.IntN(100_000)
			off := int64(rng.IntN(len(model) + 200_000))
			buf := make([]byte, n)
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			err := v.WriteAt(ctx, buf, off)
			if off+int64(n) > int64(len(model)) {
				if !errors.Is(err, blockdev.ErrOutOfRange) {
					t.Fatalf("op %d: write [%d,+%d) past the end %d: %v, want ErrOutOfRange", i, off, n, len(model), err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("op %d write: %v", i, err)
			}
			copy(model[off:], buf)
		case op < 9:
			n := 1 + rng.IntN(100_000)
			off := int64(rng.IntN(len(model) - min(n, len(model)) + 1))
			n = min(n, len(model)-int(off))
			if err := v.WriteZeroes(ctx, off, int64(n)); err != nil {
				t.Fatalf("op %d zero: %v", i, err)
			}
			clear(model[off : off+int64(n)])
		case op < 11:
			if err := v.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		case op < 13:
			if len(model) >= maxSize {
				continue
			}
			grown := min(len(model)+4096*(1+rng.IntN(200)), maxSize)
			if err := v.Resize(ctx, uint64(grown)); err != nil {
				t.Fatalf("op %d resize %d -> %d: %v", i, len(model), grown, err)
			}
			model = append(model, make([]byte, grown-len(model))...)
		case op < 14 && rng.IntN(4) == 0:
			if err := v.Close(ctx); err != nil {
				t.Fatalf("op %d close: %v", i, err)
			}
			if v, err = p.Open(ctx, "m", o); err != nil {
				t.Fatalf("op %d takeover: %v", i, err)
			}
			if v.Size() != int64(len(model)) {
				t.Fatalf("op %d: size after takeover %d, model %d", i, v.Size(), len(model))
			}
			checkAll(t, ctx, v, model)
		default:
			n := 1 + rng.IntN(100_000)
			off := int64(rng.IntN(len(model)))
			n = min(n, len(model)-int(off))
			got := mustRead(t, v, off, n)
			if !bytes.Equal(got, model[off:off+int64(n)]) {
				t.Fatalf("op %d: read [%d,+%d) differs from model at byte %d", i, off, n, firstDiff(got, model[off:]))
			}
		}
	}
	if len(model) == 256<<10 {
		t.Fatal("the run never resized the volume")
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ro, err := p.Open(ctx, "m", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	if ro.Size() != int64(len(model)) {
		t.Fatalf("read-only attach: size %d, model %d", ro.Size(), len(model))
	}
	checkAll(t, ctx, ro, model)
}
