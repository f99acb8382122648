package volume

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// waitForLog polls buf until it contains want, failing t after d.
func waitForLog(t *testing.T, buf *lockedbuf.Buffer, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(buf.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log has no %q after %s:\n%s", want, d, buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStalledStoreFlushTimeout: record creates hang (the store accepts the
// request and never answers) until released. Each request is cut by
// StoreTimeout and retried; the stalled upload is logged at WARN within
// StallWarn, naming the operation and key; Flush gives up with
// ErrFlushTimeout after FlushTimeout while the data stays queued; once the
// store answers again, a second Flush succeeds and every write reads back
// after reattaching.
func TestStalledStoreFlushTimeout(t *testing.T) {
	ctx := context.Background()
	var stalled atomic.Bool
	var stalls atomic.Int64
	release := make(chan struct{})
	store := faultstore.New(openStore(t, "mem://stalled"), faultstore.Hooks{
		BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
			if !stalled.Load() || op != faultstore.OpPutIfAbsent || !isLogKey(key) {
				return nil
			}
			stalls.Add(1)
			select {
			case <-ctx.Done(): // the client gave up on the request
				return ctx.Err()
			case <-release:
				return nil
			}
		},
	})
	p := initPool(t, store)
	if _, err := p.Create(ctx, "v", CreateOptions{Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	var logBuf lockedbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	const flushTimeout = 1500 * time.Millisecond
	v, err := p.Open(ctx, "v", Options{Logger: log, IdleFlush: -1,
		StoreTimeout: 200 * time.Millisecond, StallWarn: 300 * time.Millisecond, FlushTimeout: flushTimeout})
	if err != nil {
		t.Fatal(err)
	}
	pattern := func(b byte) []byte { return bytes.Repeat([]byte{b}, 1<<20) }
	if err := v.WriteAt(ctx, pattern(0xa1), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush before the stall: %v", err)
	}

	stalled.Store(true)
	if err := v.WriteAt(ctx, pattern(0xb2), 1<<20); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	err = v.Flush(fctx)
	took := time.Since(start)
	if !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("flush on a stalled store after %s: err = %v, want ErrFlushTimeout", took, err)
	}
	if took < flushTimeout || took > flushTimeout+5*time.Second {
		t.Errorf("flush gave up after %s, want about %s", took, flushTimeout)
	}
	if !strings.Contains(err.Error(), "put-if-absent") {
		t.Errorf("flush error does not name the stalled operation: %v", err)
	}
	// The WARN came within StallWarn (well before the flush gave up) and
	// names the request and the record's key.
	out := logBuf.String()
	for _, want := range []string{"level=WARN msg=\"object store stalled: record upload is waiting", "op=put-if-absent", "/log/", "level=WARN msg=\"flush stalled"} {
		if !strings.Contains(out, want) {
			t.Errorf("log has no %q:\n%s", want, out)
		}
	}
	// Each hanging request was cut by StoreTimeout and retried.
	if n := stalls.Load(); n < 3 {
		t.Errorf("stalled create was tried %d times in %s with a 200ms request timeout, want retries", n, took)
	}
	st := v.Stats()
	if st.StalledUploads != 1 || st.RequestTimeouts < 2 || st.FlushTimeouts != 1 || st.PendingUploads != 1 || st.OldestPendingAge < flushTimeout {
		t.Errorf("stats while stalled: %+v", st)
	}
	// Writes go on being accepted (buffered) meanwhile.
	if err := v.WriteAt(ctx, pattern(0xc3), 2<<20); err != nil {
		t.Fatalf("write while stalled: %v", err)
	}

	close(release)
	if err := v.Flush(fctx); err != nil {
		t.Fatalf("flush after the store recovered: %v", err)
	}
	waitForLog(t, &logBuf, "object store recovered", 5*time.Second)
	if st := v.Stats(); st.StalledUploads != 0 || st.PendingUploads != 0 {
		t.Errorf("stats after recovery: %+v", st)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}

	r, err := p.Open(ctx, "v", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	for i, b := range []byte{0xa1, 0xb2, 0xc3} {
		got := make([]byte, 1<<20)
		if err := r.ReadAt(ctx, got, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pattern(b)) {
			t.Errorf("MiB %d after reattach differs from what was written (want %#x)", i, b)
		}
	}
}

// TestTimedOutCreateThatLanded: a record create happens but its response
// never comes; the per-request timeout cuts it, the retry finds the slot
// taken, reads it and the journal judges it our own (writer id): the flush
// succeeds, nothing is fenced and the data is there after reattaching.
func TestTimedOutCreateThatLanded(t *testing.T) {
	ctx := context.Background()
	var armed atomic.Bool
	var lost atomic.Int64
	store := faultstore.New(openStore(t, "mem://landed"), faultstore.Hooks{
		AfterCtx: func(ctx context.Context, op faultstore.Op, key string, err error) error {
			if op != faultstore.OpPutIfAbsent || !isLogKey(key) || err != nil || !armed.CompareAndSwap(true, false) {
				return nil
			}
			lost.Add(1)
			<-ctx.Done() // the response never arrives
			return ctx.Err()
		},
	})
	p := initPool(t, store)
	if _, err := p.Create(ctx, "v", CreateOptions{Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	var logBuf lockedbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	v, err := p.Open(ctx, "v", Options{Logger: log, IdleFlush: -1, StoreTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x5a}, 64<<10)
	if err := v.WriteAt(ctx, want, 4096); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := v.Flush(fctx); err != nil {
		t.Fatalf("flush after a create whose response timed out: %v", err)
	}
	if lost.Load() != 1 || v.Stats().RequestTimeouts != 1 {
		t.Errorf("lost responses %d, request timeouts %d; want 1 each", lost.Load(), v.Stats().RequestTimeouts)
	}
	if v.Fenced() || strings.Contains(logBuf.String(), "FENCED") {
		t.Fatalf("writer fenced itself over its own landed record:\n%s", logBuf.String())
	}
	// The log goes on after the judged slot.
	if err := v.WriteAt(ctx, want, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := p.Open(ctx, "v", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	for _, off := range []int64{4096, 1 << 20} {
		got := make([]byte, len(want))
		if err := r.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("data at %d lost after a timed-out create", off)
		}
	}
}

// TestStalledStoreReadFails: ranged GETs of records hang (the store never
// answers) until released. A read that misses the cache fails within its
// bounded attempts of StoreTimeout each instead of waiting for the store
// client's own timeouts; reads stalled together make one WARN naming the
// request and a record key, not one each; once the store answers, the
// same reads return the data.
func TestStalledStoreReadFails(t *testing.T) {
	ctx := context.Background()
	var stalled atomic.Bool
	release := make(chan struct{})
	store := faultstore.New(openStore(t, "mem://stalled-read"), faultstore.Hooks{
		BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
			if !stalled.Load() || op != faultstore.OpGetRange || !isLogKey(key) {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-release:
				return nil
			}
		},
	})
	p := initPool(t, store)
	if _, err := p.Create(ctx, "v", CreateOptions{Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	w, err := p.Open(ctx, "v", Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x5e}, 4<<20)
	if err := w.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}

	var logBuf lockedbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	const storeTimeout = 200 * time.Millisecond
	r, err := p.Open(ctx, "v", Options{ReadOnly: true, Logger: log, StoreTimeout: storeTimeout, StallWarn: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	stalled.Store(true)
	const readers = 4
	errs := make(chan error, readers)
	start := time.Now()
	for i := range readers {
		go func() { errs <- r.ReadAt(ctx, make([]byte, 4096), int64(i)<<20) }()
	}
	for range readers {
		select {
		case err := <-errs:
			if err == nil {
				t.Fatal("a read from a stalled store succeeded")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("read from a stalled store: %v, want the request deadline", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("reads from a stalled store have not returned after 30 s (StoreTimeout %s)", storeTimeout)
		}
	}
	if took := time.Since(start); took > 20*storeTimeout {
		t.Errorf("reads failed after %s, want a few StoreTimeouts (%s)", took, storeTimeout)
	}
	const warn = `level=WARN msg="object store stalled: read is waiting"`
	var warns []string
	for line := range strings.SplitSeq(logBuf.String(), "\n") {
		if strings.Contains(line, warn) {
			warns = append(warns, line)
		}
	}
	if len(warns) != 1 {
		t.Fatalf("%d stall WARNs for %d reads stalled together, want 1:\n%s", len(warns), readers, logBuf.String())
	}
	if !strings.Contains(warns[0], "op=get-range") || !strings.Contains(warns[0], "/log/") {
		t.Errorf("stall WARN does not name the request and the record: %s", warns[0])
	}
	if st := r.Stats(); st.RequestTimeouts < readers {
		t.Errorf("RequestTimeouts %d after %d stalled reads", st.RequestTimeouts, readers)
	}

	close(release)
	got := make([]byte, 4<<20)
	if err := r.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the store answered again: %v (data ok %v)", err, bytes.Equal(got, want))
	}
}
