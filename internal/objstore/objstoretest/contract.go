// Package objstoretest holds the contract test suite that every
// objstore.Store backend must pass.
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// RunContractTests runs the Store contract against stores made by newStore.
// newStore must return a fresh, empty store for each call; the suite closes
// every store it gets (and expects Close to succeed). Subtests run
// sequentially.
func RunContractTests(t *testing.T, newStore func(t *testing.T) objstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s objstore.Store)
	}{
		{"Empty", testEmpty},
		{"NotFound", testNotFound},
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"PutAtomicForReaders", testPutAtomicForReaders},
		{"GetRange", testGetRange},
		{"GetRangeEmptyObject", testGetRangeEmptyObject},
		{"PutIfAbsent", testPutIfAbsent},
		{"PutIfAbsentRace", testPutIfAbsentRace},
		{"PutIfAbsentTakenLarge", testPutIfAbsentTakenLarge},
		{"GetIfChanged", testGetIfChanged},
		{"Delete", testDelete},
		{"List", testList},
		{"ListStop", testListStop},
		{"ListMany", testListMany},
		{"InvalidKeys", testInvalidKeys},
		{"CanceledContext", testCanceledContext},
		{"ConcurrentMixed", testConcurrentMixed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// randBytes returns n deterministic pseudo-random bytes for seed.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x75726c6469736b))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func mustPut(t *testing.T, s objstore.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, data); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s objstore.Store, key string) []byte {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return got
}

func listKeys(t *testing.T, s objstore.Store, prefix string) []objstore.ObjectInfo {
	t.Helper()
	var out []objstore.ObjectInfo
	if err := s.List(t.Context(), prefix, func(oi objstore.ObjectInfo) error {
		out = append(out, oi)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return out
}

func keysOf(infos []objstore.ObjectInfo) []string {
	keys := make([]string, len(infos))
	for i, oi := range infos {
		keys[i] = oi.Key
	}
	return keys
}

func testEmpty(t *testing.T, s objstore.Store) {
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Fatalf("fresh store lists %v, want nothing", keysOf(got))
	}
}

func testNotFound(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	if _, err := s.Get(ctx, "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get missing: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "no/such/dir/missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get missing nested: err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetRange(ctx, "missing", 0, make([]byte, 10)); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("GetRange missing: err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetRange(ctx, "missing", 5, nil); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("GetRange missing, empty buffer: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Stat missing: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Errorf("Delete missing: %v, want nil", err)
	}
	// A "directory" of other keys is not an object.
	mustPut(t, s, "dir/obj", []byte("x"))
	if _, err := s.Get(ctx, "dir"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get of a key prefix: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "dir"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Stat of a key prefix: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "dir/obj/under"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get below an object: err = %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, s objstore.Store) {
	start := time.Now()
	for i, n := range []int{0, 1, 4096, 1<<20 + 7} {
		key := fmt.Sprintf("obj/%d", n)
		data := randBytes(uint64(i), n)
		mustPut(t, s, key, data)
		if got := mustGet(t, s, key); !bytes.Equal(got, data) {
			t.Fatalf("Get(%q): %d bytes differ from the %d put", key, len(got), len(data))
		}
		info, err := s.Stat(t.Context(), key)
		if err != nil {
			t.Fatalf("Stat(%q): %v", key, err)
		}
		if info.Key != key || info.Size != int64(n) {
			t.Errorf("Stat(%q) = %+v, want key %q size %d", key, info, key, n)
		}
		// Generous bounds: the server's clock may differ a little.
		if info.ModTime.Before(start.Add(-time.Hour)) || info.ModTime.After(time.Now().Add(time.Hour)) {
			t.Errorf("Stat(%q).ModTime = %v, not near now (%v)", key, info.ModTime, start)
		}
	}
}

func testOverwrite(t *testing.T, s objstore.Store) {
	mustPut(t, s, "k", []byte("first version, longer"))
	mustPut(t, s, "k", []byte("second"))
	if got := mustGet(t, s, "k"); string(got) != "second" {
		t.Fatalf("Get after overwrite = %q, want %q", got, "second")
	}
	info, err := s.Stat(t.Context(), "k")
	if err != nil || info.Size != 6 {
		t.Fatalf("Stat after overwrite = %+v, %v; want size 6", info, err)
	}
}

// testPutAtomicForReaders overwrites one key with two different versions
// while readers check they always see one whole version.
func testPutAtomicForReaders(t *testing.T, s objstore.Store) {
	versions := [][]byte{bytes.Repeat([]byte{'a'}, 256<<10), bytes.Repeat([]byte{'b'}, 512<<10)}
	mustPut(t, s, "atomic", versions[0])
	var (
		wg   sync.WaitGroup
		done = make(chan struct{})
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				got, err := s.Get(t.Context(), "atomic")
				if err != nil {
					t.Errorf("Get during overwrites: %v", err)
					return
				}
				if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
					t.Errorf("Get during overwrites: %d bytes that are neither version", len(got))
					return
				}
			}
		})
	}
	for i := range 20 {
		if err := s.Put(t.Context(), "atomic", versions[i%2]); err != nil {
			t.Errorf("Put: %v", err)
			break
		}
	}
	close(done)
	wg.Wait()
}

func testGetRange(t *testing.T, s objstore.Store) {
	const size = 10000
	data := randBytes(7, size)
	mustPut(t, s, "r", data)
	for _, tc := range []struct {
		off    int64
		len, n int
	}{
		{0, 100, 100},
		{1, 1, 1},
		{5000, 1000, 1000},
		{size - 100, 100, 100}, // ends exactly at the end
		{size - 50, 100, 50},   // short read at the end
		{size - 1, 4096, 1},
		{0, size, size},
		{0, 2 * size, size},
		{size, 10, 0},     // starts at the end
		{2 * size, 10, 0}, // starts past the end
		{123, 0, 0},       // empty buffer
	} {
		p := make([]byte, tc.len)
		n, err := s.GetRange(t.Context(), "r", tc.off, p)
		if err != nil {
			t.Errorf("GetRange(off %d, len %d): %v", tc.off, tc.len, err)
			continue
		}
		if n != tc.n {
			t.Errorf("GetRange(off %d, len %d) = %d bytes, want %d", tc.off, tc.len, n, tc.n)
			continue
		}
		if n > 0 && !bytes.Equal(p[:n], data[tc.off:tc.off+int64(n)]) {
			t.Errorf("GetRange(off %d, len %d): wrong bytes", tc.off, tc.len)
		}
	}
	if _, err := s.GetRange(t.Context(), "r", -1, make([]byte, 10)); err == nil || errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("GetRange at offset -1: err = %v, want a non-not-found error", err)
	}
}

func testGetRangeEmptyObject(t *testing.T, s objstore.Store) {
	mustPut(t, s, "empty", nil)
	for _, off := range []int64{0, 1, 100} {
		n, err := s.GetRange(t.Context(), "empty", off, make([]byte, 10))
		if n != 0 || err != nil {
			t.Errorf("GetRange(empty object, off %d) = %d, %v; want 0, nil", off, n, err)
		}
	}
}

func testPutIfAbsent(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	if err := s.PutIfAbsent(ctx, "log/0001", []byte("one")); err != nil {
		t.Fatalf("first PutIfAbsent: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "log/0001", []byte("two")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("second PutIfAbsent: err = %v, want ErrExists", err)
	}
	if got := mustGet(t, s, "log/0001"); string(got) != "one" {
		t.Fatalf("after refused PutIfAbsent: content %q, want %q", got, "one")
	}
	// A plain Put's object is just as taken.
	mustPut(t, s, "log/0002", []byte("put"))
	if err := s.PutIfAbsent(ctx, "log/0002", []byte("pia")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("PutIfAbsent over Put: err = %v, want ErrExists", err)
	}
	// Empty content, then a freed key can be created again.
	if err := s.PutIfAbsent(ctx, "log/empty", nil); err != nil {
		t.Fatalf("PutIfAbsent empty: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "log/empty", nil); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("PutIfAbsent empty again: err = %v, want ErrExists", err)
	}
	if err := s.Delete(ctx, "log/0001"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "log/0001", []byte("three")); err != nil {
		t.Fatalf("PutIfAbsent after Delete: %v", err)
	}
	if got := mustGet(t, s, "log/0001"); string(got) != "three" {
		t.Fatalf("content %q, want %q", got, "three")
	}
}

// testPutIfAbsentTakenLarge: a conditional create of a taken key with a
// record-sized body is ErrExists too, and changes nothing. A server may
// refuse it as soon as it has the headers and reset the connection while
// the body is still being sent (versitygw does): the client then never
// sees the refusal, and the store must still answer ErrExists.
func testPutIfAbsentTakenLarge(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	first := randBytes(1, 8<<20)
	if err := s.PutIfAbsent(ctx, "log/big", first); err != nil {
		t.Fatalf("first PutIfAbsent of 8 MiB: %v", err)
	}
	for i := range 3 {
		if err := s.PutIfAbsent(ctx, "log/big", randBytes(uint64(2+i), 8<<20)); !errors.Is(err, objstore.ErrExists) {
			t.Fatalf("PutIfAbsent %d of 8 MiB over a taken key: err = %v, want ErrExists", i+2, err)
		}
	}
	if got := mustGet(t, s, "log/big"); !bytes.Equal(got, first) {
		t.Fatalf("after refused creates the object is not the first one")
	}
}

// testGetIfChanged: GetIfChanged returns the object and an ETag; given
// that ETag it answers ErrNotModified while the object is unchanged; an
// overwrite of the same size changes the ETag; a missing key is
// ErrNotFound.
func testGetIfChanged(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	if _, _, err := objstore.GetIfChanged(ctx, s, "hb/a", ""); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("GetIfChanged of a missing key: %v, want ErrNotFound", err)
	}
	mustPut(t, s, "hb/a", []byte("one"))
	data, tag, err := objstore.GetIfChanged(ctx, s, "hb/a", "")
	if err != nil || string(data) != "one" || tag == "" {
		t.Fatalf("GetIfChanged: %q, etag %q, %v", data, tag, err)
	}
	if data, _, err := objstore.GetIfChanged(ctx, s, "hb/a", tag); !errors.Is(err, objstore.ErrNotModified) || data != nil {
		t.Fatalf("GetIfChanged with the current etag: %q, %v, want ErrNotModified", data, err)
	}
	mustPut(t, s, "hb/a", []byte("two"))
	data, tag2, err := objstore.GetIfChanged(ctx, s, "hb/a", tag)
	if err != nil || string(data) != "two" || tag2 == tag || tag2 == "" {
		t.Fatalf("GetIfChanged after an overwrite: %q, etag %q (was %q), %v", data, tag2, tag, err)
	}
	if _, _, err := objstore.GetIfChanged(ctx, s, "hb/a", tag2); !errors.Is(err, objstore.ErrNotModified) {
		t.Fatalf("GetIfChanged with the new etag: %v, want ErrNotModified", err)
	}
	if err := s.Delete(ctx, "hb/a"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := objstore.GetIfChanged(ctx, s, "hb/a", tag2); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("GetIfChanged of a deleted key: %v, want ErrNotFound", err)
	}
}

// testPutIfAbsentRace has 16 goroutines race to create each key with
// different content: exactly one must win, the rest get ErrExists, and the
// object must hold the winner's content.
func testPutIfAbsentRace(t *testing.T, s objstore.Store) {
	const racers = 16
	for round := range 5 {
		key := fmt.Sprintf("race/%04d", round)
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  [racers]error
			data  [racers][]byte
		)
		for i := range racers {
			// Different lengths too, so a torn or mixed write would show.
			data[i] = append([]byte(fmt.Sprintf("round %d racer %d:", round, i)), randBytes(uint64(round*racers+i), 100+i*997)...)
			wg.Go(func() {
				<-start
				errs[i] = s.PutIfAbsent(t.Context(), key, data[i])
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("%s: racers %d and %d both created the key", key, winner, i)
				}
				winner = i
			case !errors.Is(err, objstore.ErrExists):
				t.Fatalf("%s: racer %d: err = %v, want nil or ErrExists", key, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no racer created the key", key)
		}
		if got := mustGet(t, s, key); !bytes.Equal(got, data[winner]) {
			t.Fatalf("%s: content is not the winner's (racer %d)", key, winner)
		}
	}
}

func testDelete(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	mustPut(t, s, "d/a", []byte("a"))
	mustPut(t, s, "d/b", []byte("b"))
	if err := s.Delete(ctx, "d/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, "d/a"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "d/a"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat after Delete: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "d/a"); err != nil {
		t.Fatalf("second Delete: %v, want nil", err)
	}
	if got := keysOf(listKeys(t, s, "")); !slices.Equal(got, []string{"d/b"}) {
		t.Fatalf("List after Delete = %v, want [d/b]", got)
	}
	if got := mustGet(t, s, "d/b"); string(got) != "b" {
		t.Fatalf("neighbour of deleted key: %q", got)
	}
}

func testList(t *testing.T, s objstore.Store) {
	// Chosen so that per-directory order differs from key order:
	// '-' < '/' < '0' in ASCII.
	keys := []string{"x/a-c", "x/a/b", "x/a/c/d", "x/a0", "x/ab", "x/b", "y", "y-z/1"}
	for i, k := range keys {
		mustPut(t, s, k, bytes.Repeat([]byte{'.'}, i+1))
	}
	all := listKeys(t, s, "")
	if got := keysOf(all); !slices.Equal(got, keys) {
		t.Fatalf("List(\"\") = %v, want %v", got, keys)
	}
	for i, oi := range all {
		if oi.Size != int64(i+1) {
			t.Errorf("List: %s has size %d, want %d", oi.Key, oi.Size, i+1)
		}
		if oi.ModTime.IsZero() {
			t.Errorf("List: %s has zero ModTime", oi.Key)
		}
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"x/", keys[:6]},
		{"x/a", []string{"x/a-c", "x/a/b", "x/a/c/d", "x/a0", "x/ab"}},
		{"x/a/", []string{"x/a/b", "x/a/c/d"}},
		{"x/a/b", []string{"x/a/b"}},
		{"x/a/c", []string{"x/a/c/d"}},
		{"y", []string{"y", "y-z/1"}},
		{"y-", []string{"y-z/1"}},
		{"x/c", nil},
		{"nomatch/", nil},
	} {
		if got := keysOf(listKeys(t, s, tc.prefix)); !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %v, want %v", tc.prefix, got, tc.want)
		}
	}
}

func testListStop(t *testing.T, s objstore.Store) {
	for _, k := range []string{"a", "b", "c"} {
		mustPut(t, s, k, []byte(k))
	}
	stop := errors.New("stop here")
	var seen []string
	err := s.List(t.Context(), "", func(oi objstore.ObjectInfo) error {
		seen = append(seen, oi.Key)
		if oi.Key == "b" {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("List with failing callback: err = %v, want the callback's error", err)
	}
	if !slices.Equal(seen, []string{"a", "b"}) {
		t.Fatalf("List called back for %v, want [a b]", seen)
	}
}

// testListMany lists more keys than one S3 page (1000).
func testListMany(t *testing.T, s objstore.Store) {
	const n = 1100
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("many/%05d", i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan string)
	for range 16 {
		wg.Go(func() {
			for k := range work {
				if err := s.Put(t.Context(), k, []byte(k)); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Put: %v", err)
	}
	if got := keysOf(listKeys(t, s, "many/")); !slices.Equal(got, keys) {
		t.Fatalf("List of %d keys returned %d keys, or out of order", n, len(got))
	}
	if got := keysOf(listKeys(t, s, "many/0105")); !slices.Equal(got, keys[1050:1060]) {
		t.Fatalf("List(\"many/0105\") = %v, want %v", got, keys[1050:1060])
	}
	// ListAfter starts strictly after a key, across page boundaries.
	for _, after := range []int{-1, 0, 998, 999, 1000, 1098, 1099} {
		start := ""
		if after >= 0 {
			start = keys[after]
		}
		var got []string
		if err := objstore.ListAfter(t.Context(), s, "many/", start, func(oi objstore.ObjectInfo) error {
			got = append(got, oi.Key)
			return nil
		}); err != nil {
			t.Fatalf("ListAfter(%q): %v", start, err)
		}
		if !slices.Equal(got, keys[after+1:]) {
			t.Fatalf("ListAfter(%q) returned %d keys, want %d", start, len(got), len(keys[after+1:]))
		}
	}
}

func testInvalidKeys(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	for _, key := range []string{"", "/abs", "a//b", "trailing/", "../up", "a/./b", "a/../b", ".urldisk-tmp.x", "d/.urldisk-tmp.1"} {
		check := func(op string, err error) {
			if !errors.Is(err, objstore.ErrBadKey) {
				t.Errorf("%s(%q): err = %v, want ErrBadKey", op, key, err)
			}
		}
		_, err := s.Get(ctx, key)
		check("Get", err)
		_, err = s.GetRange(ctx, key, 0, make([]byte, 1))
		check("GetRange", err)
		check("Put", s.Put(ctx, key, []byte("x")))
		check("PutIfAbsent", s.PutIfAbsent(ctx, key, []byte("x")))
		check("Delete", s.Delete(ctx, key))
		_, err = s.Stat(ctx, key)
		check("Stat", err)
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Fatalf("invalid keys left objects: %v", keysOf(got))
	}
}

func testCanceledContext(t *testing.T, s objstore.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Put(ctx, "c", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with canceled context: err = %v, want context.Canceled", err)
	}
	if err := s.PutIfAbsent(ctx, "c", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("PutIfAbsent with canceled context: err = %v, want context.Canceled", err)
	}
	if _, err := s.Get(ctx, "c"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with canceled context: err = %v, want context.Canceled", err)
	}
	if _, err := s.Get(t.Context(), "c"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get after canceled Puts: err = %v, want ErrNotFound", err)
	}
}

// testConcurrentMixed runs puts, reads and deletes of distinct keys from
// many goroutines (run it with -race).
func testConcurrentMixed(t *testing.T, s objstore.Store) {
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			ctx := t.Context()
			for i := range 8 {
				key := fmt.Sprintf("mixed/%02d/%d", g, i)
				data := randBytes(uint64(g*100+i), 1000+g)
				if err := s.Put(ctx, key, data); err != nil {
					t.Errorf("Put(%s): %v", key, err)
					return
				}
				got, err := s.Get(ctx, key)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get(%s): %v (equal %v)", key, err, bytes.Equal(got, data))
					return
				}
				p := make([]byte, 100)
				if n, err := s.GetRange(ctx, key, 500, p); err != nil || n != 100 || !bytes.Equal(p, data[500:600]) {
					t.Errorf("GetRange(%s): n %d, %v", key, n, err)
					return
				}
				if i%2 == 1 {
					if err := s.Delete(ctx, key); err != nil {
						t.Errorf("Delete(%s): %v", key, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if got := len(listKeys(t, s, "mixed/")); got != 16*4 {
		t.Fatalf("List after mixed load: %d keys, want %d", got, 16*4)
	}
}
