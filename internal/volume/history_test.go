package volume

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func mustRead(t *testing.T, v *Volume, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := v.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return p
}

func TestCheckpointRestoreClone(t *testing.T) {
	ctx := context.Background()
	p := initPool(t, openStore(t, "file://"+t.TempDir()))
	if _, err := p.Create(ctx, "src", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := p.Open(ctx, "src", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, fill('a', 8192), 0); err != nil {
		t.Fatal(err)
	}
	c1, err := v.Checkpoint(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Checkpoint(ctx, "one"); !errors.Is(err, ErrCheckpointExists) {
		t.Fatalf("duplicate label: %v", err)
	}
	if err := v.WriteAt(ctx, fill('b', 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Checkpoint(ctx, "two"); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, fill('c', 4096), 0); err != nil {
		t.Fatal(err)
	}
	// Restore in place to "one": later checkpoint "two" stays.
	if _, err := v.Restore(ctx, Point{Label: "one"}); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, v, 0, 8192); !bytes.Equal(got, fill('a', 8192)) {
		t.Fatalf("after restore: %q...", got[:8])
	}
	if err := v.WriteAt(ctx, fill('d', 10), 100); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	want := fill('a', 8192)
	copy(want[100:], fill('d', 10))
	// Replay sees the restore and the write after it.
	ro, err := p.Open(ctx, "src", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, ro, 0, 8192); !bytes.Equal(got, want) {
		t.Fatalf("replayed restore differs at %d", firstDiff(got, want))
	}
	ro.Close(ctx)
	// Points: "two" still reads a's then b's.
	two, err := p.OpenAt(ctx, "src", Point{Label: "two"}, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, two, 0, 8192); !bytes.Equal(got, append(fill('a', 4096), fill('b', 4096)...)) {
		t.Fatal("checkpoint two reads wrong data")
	}
	two.Close(ctx)
	atSeq, err := p.OpenAt(ctx, "src", Point{Seq: c1.Seq, HasSeq: true}, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, atSeq, 0, 8192); !bytes.Equal(got, fill('a', 8192)) {
		t.Fatal("seq point reads wrong data")
	}
	atSeq.Close(ctx)
	if _, err := p.OpenAt(ctx, "src", Point{Label: "one"}, Options{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("read-write open of a point: %v", err)
	}
	// Clone from "two", then clone of the clone; both independent of src.
	if _, err := p.Clone(ctx, "src", Point{Label: "two"}, "kid"); err != nil {
		t.Fatal(err)
	}
	kid, err := p.Open(ctx, "kid", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, kid, 0, 8192); !bytes.Equal(got, append(fill('a', 4096), fill('b', 4096)...)) {
		t.Fatal("clone reads wrong data")
	}
	if err := kid.WriteAt(ctx, fill('k', 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := kid.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Clone(ctx, "kid", Point{}, "grandkid"); err != nil {
		t.Fatal(err)
	}
	gk, err := p.Open(ctx, "grandkid", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, gk, 0, 8192); !bytes.Equal(got, append(fill('k', 4096), fill('b', 4096)...)) {
		t.Fatal("clone of clone reads wrong data")
	}
	gk.Close(ctx)
	// The source is untouched by its clones.
	ro, _ = p.Open(ctx, "src", Options{ReadOnly: true})
	if got := mustRead(t, ro, 0, 8192); !bytes.Equal(got, want) {
		t.Fatal("source changed by clone writes")
	}
	ro.Close(ctx)
	cps, err := p.Checkpoints(ctx, "src")
	if err != nil || len(cps) != 2 || cps[0].Label != "one" || cps[1].Label != "two" {
		t.Fatalf("checkpoints %+v %v", cps, err)
	}
	if err := p.RemoveCheckpoint(ctx, "src", "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.OpenAt(ctx, "src", Point{Label: "one"}, Options{ReadOnly: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed checkpoint opened: %v", err)
	}
}

func TestFollowReplica(t *testing.T) {
	ctx := context.Background()
	p := initPool(t, openStore(t, "file://"+t.TempDir()))
	if _, err := p.Create(ctx, "f", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	w, err := p.Open(ctx, "f", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	r, err := p.Open(ctx, "f", Options{ReadOnly: true, Follow: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	if err := w.WriteAt(ctx, fill('z', 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	for !bytes.Equal(mustRead(t, r, 4096, 4096), fill('z', 4096)) {
		if time.Since(flushed) > 5*time.Second {
			t.Fatal("replica never saw the flushed write")
		}
		r.mu.Lock()
		ch := r.progress
		r.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(time.Second):
		}
	}
	// The writer was not fenced by the reader.
	if err := w.WriteAt(ctx, fill('y', 10), 0); err != nil || w.Flush(ctx) != nil {
		t.Fatalf("writer disturbed by replica: %v", err)
	}
	if _, err := ParsePoint("x:y"); !errors.Is(err, ErrInvalid) {
		t.Fatal("bad point accepted")
	}
}
