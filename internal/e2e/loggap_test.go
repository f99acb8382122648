package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// volumeLog opens the pool's store (as the test's own client) and returns
// it with the id of volume name and a function listing its log seqs.
func volumeLog(t *testing.T, poolURL, name string) (objstore.Store, string, func() []uint64) {
	t.Helper()
	ctx := context.Background()
	store, err := objstore.Open(ctx, poolURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := store.Get(ctx, format.NameKey(name))
	if err != nil {
		t.Fatal(err)
	}
	var nb format.NameBinding
	if err := format.DecodeDoc(format.KindName, b, &nb); err != nil {
		t.Fatal(err)
	}
	list := func() []uint64 {
		var seqs []uint64
		if err := store.List(ctx, format.LogPrefix(nb.ID), func(oi objstore.ObjectInfo) error {
			if s, err := format.ParseSeqKey(oi.Key); err == nil {
				seqs = append(seqs, s)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(seqs)
		return seqs
	}
	return store, nb.ID, list
}

// TestDeletedLogRecordStopsServe is issue 15's first finding end to end, on
// a real versitygw: 4 x 1 MiB writes each flushed through qemu-io, kill -9
// serve, delete log record 3; serve again must refuse with a clear error
// instead of serving MiB 1-3 as zeros, and must not write a fence over the
// gap (which voided records 4-5 for good). `urldisk verify` exits 0 on the
// healthy volume, 1 naming the missing record after the deletion, and
// --deep catches a flipped byte in a chunk that a shallow verify cannot see.
func TestDeletedLogRecordStopsServe(t *testing.T) {
	srv := s3server.Start(t)
	vol := volURL(srv.URL, "gap")
	s := startServe(t, vol, "--create", "--size", "16M")
	qemuIO(t, s.URI("gap"), nil,
		"write -P 0x11 0 1M", "flush",
		"write -P 0x12 1M 1M", "flush",
		"write -P 0x13 2M 1M", "flush",
		"write -P 0x14 3M 1M", "flush")
	s.expectFailure = true
	s.Signal(syscall.SIGKILL)
	if code := s.Wait(30 * time.Second); code != -1 {
		t.Fatalf("serve exited %d after SIGKILL", code)
	}

	store, id, logSeqs := volumeLog(t, srv.URL, "gap")
	if got := logSeqs(); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("log after 4 flushed writes: %v, want the fence 1 and data 2-5", got)
	}
	verify := func(args ...string) result {
		t.Helper()
		return run(t, "urldisk", append([]string{"verify", vol}, args...)...)
	}
	for _, deep := range [][]string{nil, {"--deep"}} {
		if r := verify(deep...); r.code != 0 || !strings.Contains(r.stdout, "OK") {
			t.Fatalf("verify of the healthy volume: want exit 0:\n%s", r)
		}
	}

	// --deep reads every chunk: a flipped data byte in record 2 (MiB 0,
	// chunk 5) is invisible to the trailer checks and found by --deep.
	ctx := context.Background()
	key2 := format.LogKey(id, 2)
	orig, err := store.Get(ctx, key2)
	if err != nil {
		t.Fatal(err)
	}
	flipped := slices.Clone(orig)
	flipped[format.FramePos(5)+format.FrameHeader+7] ^= 0x01
	if err := store.Put(ctx, key2, flipped); err != nil {
		t.Fatal(err)
	}
	if r := verify(); r.code != 0 {
		t.Fatalf("shallow verify reads no chunks; want exit 0:\n%s", r)
	}
	if r := verify("--deep"); r.code != 1 || !strings.Contains(r.stdout, "corrupt-record "+key2) || !strings.Contains(r.stdout, "chunk 5") {
		t.Fatalf("verify --deep of a flipped chunk byte: want exit 1 naming %s chunk 5:\n%s", key2, r)
	}
	if err := store.Put(ctx, key2, orig); err != nil {
		t.Fatal(err)
	}

	// Delete record 3 (MiB 1), as an operator's mistake or a store's loss would.
	key3 := format.LogKey(id, 3)
	if err := store.Delete(ctx, key3); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "ude2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	for i, mode := range [][]string{nil, {"--read-only"}} {
		args := append([]string{"serve", "--listen", "unix:" + filepath.Join(sockDir, "s"+string(rune('0'+i))),
			"--cache", filepath.Join(t.TempDir(), "cache"), "--cache-size", "64M", vol}, mode...)
		r := runServeBriefly(t, args...)
		if r.code == 0 || r.code == -1 || strings.Contains(r.stdout, "ready") {
			t.Fatalf("serve %v over a deleted record: want a non-zero exit before ready:\n%s", mode, r)
		}
		for _, want := range []string{"seq 3 missing", "record 5", "urldisk verify", "gap@2"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("serve %v: stderr does not say %q:\n%s", mode, want, r)
			}
		}
	}
	if got := logSeqs(); !slices.Equal(got, []uint64{1, 2, 4, 5}) {
		t.Fatalf("log after the refused serves: %v, want 1 2 4 5 (no fence over the gap)", got)
	}

	r := verify()
	if r.code != 1 || !strings.Contains(r.stdout, "log-gap "+key3) || !strings.Contains(r.stdout, "seq 3 missing") {
		t.Fatalf("verify after the deletion: want exit 1 naming %s:\n%s", key3, r)
	}
	if r := verify("--json"); r.code != 1 || !strings.Contains(r.stdout, `"kind": "log-gap"`) {
		t.Fatalf("verify --json after the deletion: want exit 1 and a log-gap problem:\n%s", r)
	}

	// The last consistent point still serves read-only: MiB 0 as written.
	ro := startServe(t, volURL(srv.URL, "gap@2"), "--read-only")
	qemuIO(t, ro.URI("gap"), []string{"-r"}, "read -P 0x11 0 1M", "read -P 0 1M 3M")
}
