package volume

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// TestWriterRefusedWithoutConditionalCreate: a pool initialised (and
// written) through a store that honours create-if-absent, then reached
// through one that does not (faultstore's NoConditionalCreate, like a
// gateway that drops If-None-Match), refuses a read-write attach with
// ErrNoConditionalCreate naming the store, before writing any fence; a
// read-only attach still reads the data. Before the probe ran at every
// attach, the marker's old answer let the writer in.
func TestWriterRefusedWithoutConditionalCreate(t *testing.T) {
	ctx := context.Background()
	inner := openStore(t, "mem://"+t.Name())
	p := initPool(t, inner)
	d, err := p.Create(ctx, "v", CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedbuf.Buffer
	v, err := p.Open(ctx, "v", Options{IdleFlush: -1, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	// The probe's cost is one debug line of the attach.
	if !strings.Contains(logs.String(), `msg="conditional-create probe" volume=v honoured=true duration=`) {
		t.Errorf("attach log has no probe line:\n%s", logs.String())
	}
	data := bytes.Repeat([]byte{0xAB}, 4096)
	if err := v.WriteAt(ctx, data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	seqs := logSeqs(t, inner, d.ID)

	bad := faultstore.New(inner, faultstore.Hooks{NoConditionalCreate: true})
	bp, err := OpenPool(ctx, bad, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bp.Open(ctx, "v", Options{IdleFlush: -1, Logger: testLogger(t)})
	if !errors.Is(err, ErrNoConditionalCreate) {
		t.Fatalf("read-write open through a store without conditional create: err = %v, want ErrNoConditionalCreate", err)
	}
	if want := "mem store (conditional create disabled by faultstore)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the store (%s)", err, want)
	}
	if got := logSeqs(t, inner, d.ID); !slices.Equal(got, seqs) {
		t.Errorf("log after the refused attach = %v, want %v unchanged (no fence)", got, seqs)
	}
	var probes []string
	if err := inner.List(ctx, objstore.ProbePrefix, func(oi objstore.ObjectInfo) error { probes = append(probes, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(probes) != 0 {
		t.Errorf("probe objects left behind: %v", probes)
	}

	ro, err := bp.Open(ctx, "v", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("read-only open through a store without conditional create: %v", err)
	}
	defer ro.Close(ctx)
	got := make([]byte, len(data))
	if err := ro.ReadAt(ctx, got, 8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("read-only read = %x..., want %x...", got[:4], data[:4])
	}
}
