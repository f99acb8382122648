package volume

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
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

// TestCreateRefusedWithoutConditionalCreate: a pool initialised on a store
// that overwrites on create-if-absent is created (read-only pools are
// legitimate) but marked so, and Create there fails with
// ErrNoConditionalCreate, as does Create in a conforming pool reached
// through such a store now; neither binds a name. Before, both created a
// volume no writer could ever open (or, in the second case, one created
// without the name's create-if-absent holding).
func TestCreateRefusedWithoutConditionalCreate(t *testing.T) {
	ctx := context.Background()
	names := func(s objstore.Store) []string {
		var keys []string
		if err := s.List(ctx, format.NamesPrefix, func(oi objstore.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
			t.Fatal(err)
		}
		return keys
	}

	roStore := faultstore.New(openStore(t, "mem://"+t.Name()+"-ro"), faultstore.Hooks{NoConditionalCreate: true})
	var logs lockedbuf.Buffer
	ro, err := InitPool(ctx, roStore, PoolOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("init pool on a store without conditional create: %v", err)
	}
	if ro.Marker().ConditionalCreate {
		t.Error("pool marker says conditional create is honoured")
	}
	if !strings.Contains(logs.String(), "writers and new volumes will be refused") {
		t.Errorf("init did not warn:\n%s", logs.String())
	}

	good := openStore(t, "mem://"+t.Name())
	initPool(t, good)
	through, err := OpenPool(ctx, faultstore.New(good, faultstore.Hooks{NoConditionalCreate: true}), PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*Pool{"marked pool": ro, "conforming pool through a bad store": through} {
		_, err := p.Create(ctx, "v", CreateOptions{Size: 1 << 20})
		if !errors.Is(err, ErrNoConditionalCreate) || !strings.Contains(err.Error(), "conditional create disabled by faultstore") {
			t.Errorf("%s: Create: err = %v, want ErrNoConditionalCreate naming the store", name, err)
		}
		if n := names(p.Store()); len(n) != 0 {
			t.Errorf("%s: names bound after the refused create: %v", name, n)
		}
	}
}

// TestProbeRetriedOnTransientError: a probe create that fails in transit
// is tried again, so one store hiccup does not fail a read-write attach
// (the fence create it precedes retries too).
func TestProbeRetriedOnTransientError(t *testing.T) {
	ctx := context.Background()
	inner := openStore(t, "mem://"+t.Name())
	initPool(t, inner)
	var failed atomic.Bool
	store := faultstore.New(inner, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op == faultstore.OpPutIfAbsent && strings.HasPrefix(key, objstore.ProbePrefix) && failed.CompareAndSwap(false, true) {
			return faultstore.ErrInjected
		}
		return nil
	}})
	p, err := OpenPool(ctx, store, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create(ctx, "v", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatalf("create after one failed probe: %v", err)
	}
	if !failed.Load() {
		t.Fatal("no probe create was failed")
	}
	v, err := p.Open(ctx, "v", Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open read-write: %v", err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
