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
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

const gapVol = "gap"

// crashVolume stops v's background work without a clean close (no final
// flush, no snapshot): what kill -9 leaves behind, minus the process.
func crashVolume(v *Volume) {
	v.mu.Lock()
	v.closed = true
	v.broadcastLocked()
	v.mu.Unlock()
	close(v.stop)
	v.cancel()
	v.wg.Wait()
}

// logSeqs lists the record seqs in volume id's log.
func logSeqs(t *testing.T, s objstore.Store, id string) []uint64 {
	t.Helper()
	var seqs []uint64
	err := s.List(context.Background(), format.LogPrefix(id), func(oi objstore.ObjectInfo) error {
		if seq, err := format.ParseSeqKey(oi.Key); err == nil {
			seqs = append(seqs, seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(seqs)
	return seqs
}

// writeFlushedMiBs opens the volume read-write (fence at seq 1), writes n
// MiB, MiB i filled with byte i+1, each flushed (records 2..n+1), and
// crashes the writer.
func writeFlushedMiBs(t *testing.T, p *Pool, n int) {
	t.Helper()
	ctx := context.Background()
	v, err := p.Open(ctx, gapVol, Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 1<<20), int64(i)<<20); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	crashVolume(v)
}

// TestDeletedRecordRefusesAttach is issue 15's first finding: 4 flushed
// writes, crash, record 3 deleted. Before the durable watermark, attach
// replayed to seq 2 (MiB 1-3 read as zeros, no error) and wrote its fence
// at seq 3, voiding records 4-5 for good.
func TestDeletedRecordRefusesAttach(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"mem", "mem://gap-deleted"},
		{"file", "file://" + t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, tc.url)
			p := initPool(t, s)
			desc, err := p.Create(ctx, gapVol, CreateOptions{Size: 8 << 20})
			if err != nil {
				t.Fatal(err)
			}
			writeFlushedMiBs(t, p, 4)
			if got := logSeqs(t, s, desc.ID); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
				t.Fatalf("log after 4 flushed writes: %v, want fence 1 and data 2-5", got)
			}
			if err := s.Delete(ctx, format.LogKey(desc.ID, 3)); err != nil {
				t.Fatal(err)
			}

			_, err = p.Open(ctx, gapVol, Options{IdleFlush: -1, Logger: testLogger(t)})
			var ge *GapError
			if !errors.Is(err, ErrLogGap) || !errors.As(err, &ge) {
				t.Fatalf("read-write attach over a deleted record: %v, want ErrLogGap", err)
			}
			if ge.Gap.First != 3 || ge.Gap.Last != 3 || ge.Gap.ProofSeq != 5 || ge.Gap.ProofDurable != 4 {
				t.Fatalf("gap %+v, want seq 3 missing, proven by record 5 (watermark 4)", ge.Gap)
			}
			for _, want := range []string{"volume gap", "seq 3 missing", "record 5", "urldisk verify", "gap@2", "--read-only"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if got := logSeqs(t, s, desc.ID); !slices.Equal(got, []uint64{1, 2, 4, 5}) {
				t.Fatalf("log after the refused attach: %v, want 1 2 4 5 (no fence written over the gap)", got)
			}

			// A read-only open of the head must not serve the rolled-back prefix either.
			if _, err := p.OpenAt(ctx, gapVol, Point{}, Options{ReadOnly: true, Logger: testLogger(t)}); !errors.Is(err, ErrLogGap) {
				t.Fatalf("read-only head open: %v, want ErrLogGap", err)
			}
			// The last consistent point before the gap still opens read-only.
			ro, err := p.OpenAt(ctx, gapVol, Point{Seq: 2, HasSeq: true}, Options{ReadOnly: true, Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("read-only open of seq 2: %v", err)
			}
			expectRegions(t, "seq 2", ro, []region{{0, 1 << 20, 1}, {1 << 20, 3 << 20, 0}})
			if err := ro.Close(ctx); err != nil {
				t.Fatal(err)
			}
			// A point past the gap is refused with the same error.
			if _, err := p.OpenAt(ctx, gapVol, Point{Seq: 4, HasSeq: true}, Options{ReadOnly: true, Logger: testLogger(t)}); !errors.Is(err, ErrLogGap) {
				t.Fatalf("read-only open of seq 4: %v, want ErrLogGap", err)
			}
		})
	}
}

// TestCrashLeftoverGapStillAttaches: a writer that crashes with pipelined
// uploads in flight leaves a record after a slot that never landed. Nothing
// from that slot on was acknowledged, so this is not loss: the next attach
// replays to the gap and fences over it, as before.
func TestCrashLeftoverGapStillAttaches(t *testing.T) {
	ctx := context.Background()
	shared := openStore(t, "mem://gap-leftover")
	p := initPool(t, shared)
	desc, err := p.Create(ctx, gapVol, CreateOptions{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeFlushedMiBs(t, p, 2) // fence 1, data 2-3

	// The next writer's uploads to slot 5 never succeed (its fence is 4);
	// slot 6, sealed while 5 was in flight, lands.
	stuck := format.LogKey(desc.ID, 5)
	store := faultstore.New(shared, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op == faultstore.OpPutIfAbsent && key == stuck {
			return errors.New("injected: upload never lands")
		}
		return nil
	}})
	pa, err := OpenPool(ctx, store, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a, err := pa.Open(ctx, gapVol, Options{IdleFlush: -1, SegmentBytes: 64 << 10, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// 128 KiB: two full 64 KiB segments, sealed into slots 5 and 6.
	if err := a.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 128<<10), 4<<20); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(logSeqs(t, shared, desc.ID), 6) {
		if time.Now().After(deadline) {
			t.Fatalf("record 6 never landed; log %v", logSeqs(t, shared, desc.ID))
		}
		time.Sleep(5 * time.Millisecond)
	}
	crashVolume(a)
	if got := logSeqs(t, shared, desc.ID); !slices.Equal(got, []uint64{1, 2, 3, 4, 6}) {
		t.Fatalf("log after the crash: %v, want 1-4 and the leftover 6", got)
	}

	b, err := p.Open(ctx, gapVol, Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("attach after a crash with uploads in flight: %v", err)
	}
	if b.w.Prefix() != 5 {
		t.Fatalf("fence at %d, want 5 (the slot that never landed)", b.w.Prefix())
	}
	expectRegions(t, "after takeover", b, []region{{0, 1 << 20, 1}, {1 << 20, 1 << 20, 2}, {4 << 20, 128 << 10, 0}})
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFollowerReportsDeletedRecord: a read replica (--follow) that finds an
// acknowledged record deleted from the log after it opened stops at the
// last consistent point, as prefix consistency requires, and says so once
// at ERROR naming the missing seq (it used to stay at that point forever
// without a word, however far the writer went on).
func TestFollowerReportsDeletedRecord(t *testing.T) {
	ctx := context.Background()
	shared := openStore(t, "mem://gap-follow")
	p := initPool(t, shared)
	desc, err := p.Create(ctx, gapVol, CreateOptions{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	w, err := p.Open(ctx, gapVol, Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	writeMiB := func(i int) {
		t.Helper()
		if err := w.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 1<<20), int64(i)<<20); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	writeMiB(0) // record 2

	// The replica's listings fail while paused, so it cannot see records
	// 3-5 before record 3 is deleted.
	var paused atomic.Bool
	store := faultstore.New(shared, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if paused.Load() && op == faultstore.OpList {
			return errors.New("injected: replica paused")
		}
		return nil
	}})
	pr, err := OpenPool(ctx, store, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedbuf.Buffer
	r, err := pr.Open(ctx, gapVol, Options{ReadOnly: true, Follow: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	paused.Store(true)
	for i := 1; i <= 3; i++ {
		writeMiB(i) // records 3-5, each vouching for the one before
	}
	if err := shared.Delete(ctx, format.LogKey(desc.ID, 3)); err != nil {
		t.Fatal(err)
	}
	paused.Store(false)

	const want = `level=ERROR msg="follow: acknowledged log records are missing`
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the replica said nothing about deleted record 3 in 10 s; log:\n%s", logs.String())
		}
	}
	// The writer goes on (the gap stays where it is) for many follow
	// rounds: still one line.
	writeMiB(4)
	time.Sleep(200 * time.Millisecond)
	var lines []string
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, want) {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d ERROR lines for one gap, want 1:\n%s", len(lines), logs.String())
	}
	for _, s := range []string{"seq 3 missing", "serving_seq=2", "urldisk verify"} {
		if !strings.Contains(lines[0], s) {
			t.Errorf("ERROR line does not say %q: %s", s, lines[0])
		}
	}
	if got := r.Head(); got != 2 {
		t.Errorf("replica head %d, want 2 (the last consistent point)", got)
	}
	expectRegions(t, "replica", r, []region{{0, 1 << 20, 1}, {1 << 20, 4 << 20, 0}})
}
