package volume

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// errDenied stands for a store error that retrying does not cure (say a
// revoked permission).
var errDenied = errors.New("access denied (injected, permanent)")

// TestFlushFailsMidPipeline: eight records are uploading at once and the
// fourth fails on every attempt. The flush covering them reports that
// error (wrapped, with ErrFlushTimeout, naming the record), a later write's
// flush is not acknowledged either, and after the writer closes and the
// volume is reattached every acknowledged write reads back, the three
// records before the failure (landed, in sequence) are visible, and nothing
// from the failed record on is (the log prefix ends at its slot).
func TestFlushFailsMidPipeline(t *testing.T) {
	for name, url := range backends(t) {
		t.Run(name, func(t *testing.T) { runFlushFailsMidPipeline(t, url) })
	}
}

func runFlushFailsMidPipeline(t *testing.T, url string) {
	ctx := context.Background()
	const chunk = 64 << 10 // SegmentBytes: every write below seals one record
	const size = 16 * chunk
	inner := openStore(t, url)
	desc, err := initPool(t, inner).Create(ctx, "pipe", CreateOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	var g gate
	var failKey string // set before the gate closes, read by uploads after
	store := faultstore.New(inner, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op != faultstore.OpPutIfAbsent || !isLogKey(key) {
			return nil
		}
		g.pass()
		if key == failKey {
			return errDenied
		}
		return nil
	}})
	pool, err := OpenPool(ctx, store, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := pool.Open(ctx, "pipe", Options{SegmentBytes: chunk, Uploads: 8, IdleFlush: -1,
		FlushTimeout: 500 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	write := func(i int, b byte) {
		t.Helper()
		if err := w.WriteAt(ctx, bytes.Repeat([]byte{b}, chunk), int64(i)*chunk); err != nil {
			t.Fatalf("write region %d: %v", i, err)
		}
	}
	for i := range 8 {
		write(i, 0xa0+byte(i)) // acknowledged by the flush below
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	next := w.w.Next()
	w.mu.Unlock()
	failKey = format.LogKey(desc.ID, next+3)

	g.close()
	for i := range 8 {
		write(i, 0xb0+byte(i)) // region i: record next+i
	}
	g.waitHeld(t, 8) // all eight in flight at once
	g.open()
	// The seven others land; the failed one keeps retrying.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if st := w.Stats(); st.PendingUploads == 1 && st.UploadRetries > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("uploads did not settle to the one failing: %+v", w.Stats())
		}
	}
	err = w.Flush(ctx)
	if !errors.Is(err, ErrFlushTimeout) || !errors.Is(err, errDenied) || !strings.Contains(err.Error(), failKey) {
		t.Fatalf("flush with record %s failing: %v; want ErrFlushTimeout wrapping the store's error and naming the record", failKey, err)
	}
	write(8, 0xc8) // record next+8: lands, but behind the failed one
	if err := w.Flush(ctx); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("flush of a write after the failure: %v; want ErrFlushTimeout (not acknowledged)", err)
	}
	for _, s := range []uint64{0, 1, 2, 4, 5, 6, 7, 8} {
		key := format.LogKey(desc.ID, next+s)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := inner.Stat(ctx, key); err == nil {
				break
			} else if !errors.Is(err, objstore.ErrNotFound) || time.Now().After(deadline) {
				t.Fatalf("record %s after the failure: %v", key, err)
			}
		}
	}
	if err := w.Close(ctx); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("close with a record failing: %v; want ErrFlushTimeout", err)
	}
	if _, err := inner.Stat(ctx, failKey); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("the failing record %s exists: %v", failKey, err)
	}

	r, err := initPool(t, inner).Open(ctx, "pipe", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	got := readAll(t, r)
	want := make([]byte, size)
	for i := range 8 {
		b := 0xa0 + byte(i) // acknowledged
		if i < 3 {
			b = 0xb0 + byte(i) // landed before the gap
		}
		copy(want[i*chunk:], bytes.Repeat([]byte{b}, chunk))
	}
	for i := range size / chunk {
		if !bytes.Equal(got[i*chunk:(i+1)*chunk], want[i*chunk:(i+1)*chunk]) {
			t.Errorf("region %d after reattach reads %#x..., want %#x...", i, got[i*chunk], want[i*chunk])
		}
	}
}

// TestConcurrentFlushesShareOneRecord (group commit): flushes that arrive
// while the record holding their writes is uploading (a queue of FLUSHes
// from one or more NBD clients) wait for that upload instead of each
// sealing and uploading a record of its own: one PUT acknowledges all of
// them, and none returns before it lands.
func TestConcurrentFlushesShareOneRecord(t *testing.T) {
	ctx := context.Background()
	inner := openStore(t, "mem://flushshare")
	if _, err := initPool(t, inner).Create(ctx, "share", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var g gate
	var puts atomic.Int64
	pool := gatedLogPool(t, inner, &g, func(string) { puts.Add(1) })
	v, err := pool.Open(ctx, "share", Options{IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	before := puts.Load()
	g.close()
	const flushes = 8
	errs := make(chan error, flushes)
	go func() { errs <- v.Flush(ctx) }()
	g.waitHeld(t, 1) // the first flush sealed the record; its upload waits
	for range flushes - 1 {
		go func() { errs <- v.Flush(ctx) }()
	}
	// The others find the record sealed and wait for it (or, started
	// late, find it durable): none may seal or upload another, and none
	// may return before the upload lands.
	select {
	case err := <-errs:
		t.Fatalf("a flush returned (%v) while its record's upload was held", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.open()
	for range flushes {
		if err := <-errs; err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	if n := puts.Load() - before; n != 1 {
		t.Fatalf("%d concurrent flushes of one write sent %d record PUTs, want 1", flushes, n)
	}
}

// TestBulkStreamCachesItsTail: records that land while others wait for an
// upload slot (a write stream outrunning the store) are not copied into the
// cache, the last ones of the stream to land are (the tail a writer reads
// back stays warm), and so is a record written while the store keeps up.
func TestBulkStreamCachesItsTail(t *testing.T) {
	ctx := context.Background()
	const chunk = 64 << 10
	const n = 12
	inner := openStore(t, "mem://bulktail")
	if _, err := initPool(t, inner).Create(ctx, "bulk", CreateOptions{Size: (n + 1) * chunk}); err != nil {
		t.Fatal(err)
	}
	var g gate
	pool := gatedLogPool(t, inner, &g, nil)
	c := openCache(t, t.TempDir(), 64<<20)
	defer c.Close()
	v, err := pool.Open(ctx, "bulk", Options{Cache: c, SegmentBytes: chunk, Uploads: 2, IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	v.mu.Lock()
	first := v.w.Next()
	v.mu.Unlock()
	cached := func(seq uint64) bool { return c.Has(cache.Key{Vol: v.Desc().ID, Seq: seq, Chunk: 0}) }

	g.close()
	for i := range n { // record first+i; two upload, ten wait for a slot
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, chunk), int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
	}
	g.waitHeld(t, 2)
	g.open()
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Flush returns once the records are durable; their fills follow.
	for deadline := time.Now().Add(30 * time.Second); v.Stats().BufferedBytes > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("segments not retired: %+v", v.Stats())
		}
	}
	// Uploads take slots in no fixed order, so which records land last is
	// not known; but the last two to land always see fewer than two others
	// pending (cached), and the k-th to land sees at least n-k-2 still
	// waiting for a slot (skipped for k <= n-4).
	var warm int
	for seq := first; seq < first+n; seq++ {
		if cached(seq) {
			warm++
		}
	}
	if st := v.Stats(); warm < 2 || st.CacheFillsSkipped < n-4 || warm+int(st.CacheFillsSkipped) != n {
		t.Errorf("%d of %d records cached, %d fills skipped; want the last 2 to land cached and at least %d skipped", warm, n, st.CacheFillsSkipped, n-4)
	}

	if err := v.WriteAt(ctx, bytes.Repeat([]byte{0x77}, 4096), n*chunk); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !cached(first + n); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("record %d, written while the store kept up, was not cached", first+n)
		}
	}
	// Every byte reads back, cached or not.
	got := readAll(t, v)
	for i := range n {
		if !bytes.Equal(got[i*chunk:(i+1)*chunk], bytes.Repeat([]byte{byte(i + 1)}, chunk)) {
			t.Fatalf("region %d reads other bytes", i)
		}
	}
}

// TestUploadsStartInSequence: records waiting for an upload slot get one in
// the order they were sealed, so a later record never delays an earlier one
// (and with it every FLUSH waiting on the durable prefix).
func TestUploadsStartInSequence(t *testing.T) {
	ctx := context.Background()
	const chunk = 4096
	const n = 48
	inner := openStore(t, "mem://upseq")
	desc, err := initPool(t, inner).Create(ctx, "upseq", CreateOptions{Size: n * chunk})
	if err != nil {
		t.Fatal(err)
	}
	var g gate
	var mu sync.Mutex
	var order []string // log keys in the order their first PUT was sent; guarded by mu
	pool := gatedLogPool(t, inner, &g, func(key string) {
		mu.Lock()
		order = append(order, key)
		mu.Unlock()
	})
	v, err := pool.Open(ctx, "upseq", Options{SegmentBytes: chunk, Uploads: 2, IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	v.mu.Lock()
	first := v.w.Next()
	v.mu.Unlock()
	mu.Lock()
	order = nil
	mu.Unlock()
	g.close()
	for i := range n { // one record each
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, chunk), int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
	}
	g.waitHeld(t, 2)
	g.open()
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != n {
		t.Fatalf("%d record PUTs, want %d", len(order), n)
	}
	// Admission is in sequence; the two records holding the two slots may
	// send in either order. So when record k is sent every record before
	// k-1 has been: the i-th PUT is of record first+i+1 at the latest.
	for i, key := range order {
		if late := format.LogKey(desc.ID, first+uint64(i)+1); key > late {
			t.Fatalf("PUT %d was %s, ahead of %s (uploads out of sequence: %q)", i, key, late, order)
		}
	}
}

// gatedLogPool opens a pool over inner whose log-record creates wait at g
// (closed: held until opened); before, if set, sees each such key first,
// in the order the uploads send them.
func gatedLogPool(t *testing.T, inner objstore.Store, g *gate, before func(key string)) *Pool {
	t.Helper()
	store := faultstore.New(inner, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op == faultstore.OpPutIfAbsent && isLogKey(key) {
			if before != nil {
				before(key)
			}
			g.pass()
		}
		return nil
	}})
	pool, err := OpenPool(context.Background(), store, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return pool
}
