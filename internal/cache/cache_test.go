package cache

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	c := openTest(t, t.TempDir(), 16, Options{})
	lengths := []int{ChunkSize, 1, SubBlockSize - 1, SubBlockSize, SubBlockSize + 1, ChunkSize - 1, 3*SubBlockSize + 17}
	stored := map[Key][]byte{}
	for i, n := range lengths {
		k := key("vol-a", uint64(100+i), uint32(i))
		stored[k] = mustPut(t, c, k, n)
	}
	reads := 0
	for k, data := range stored {
		n := len(data)
		ranges := [][2]int{
			{0, n},                // whole chunk
			{0, min(n, 4096)},     // first sub-block (direct path)
			{n - 1, 1},            // last byte
			{n / 3, n / 2},        // unaligned middle
			{0, 0},                // empty
			{min(n, 4096) - 1, 1}, // end of the first sub-block
		}
		if n > 2*SubBlockSize {
			ranges = append(ranges,
				[2]int{SubBlockSize, SubBlockSize},             // aligned second sub-block
				[2]int{SubBlockSize - 10, 20},                  // straddles a sub-block boundary
				[2]int{SubBlockSize, n - SubBlockSize},         // aligned start, ends at the short tail
				[2]int{SubBlockSize + 1, n - SubBlockSize - 1}) // unaligned start, ends at length
		}
		for _, r := range ranges {
			wantHit(t, c, k, data, r[0], r[1])
			reads++
		}
	}
	st := c.Stats()
	if st.Hits != uint64(reads) || st.Misses != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v; want %d hits, no misses", st, reads)
	}
	var sum int64
	for _, d := range stored {
		sum += int64(len(d))
	}
	if st.Bytes != sum || st.Entries != len(stored) || st.Capacity != 16*ChunkSize {
		t.Errorf("stats %+v; want %d bytes, %d entries, capacity %d", st, sum, len(stored), 16*ChunkSize)
	}
}

func TestPutCopiesData(t *testing.T) {
	c := openTest(t, t.TempDir(), MinSlots, Options{})
	k := key("v", 1, 0)
	data := chunkData(k, 5000)
	orig := bytes.Clone(data)
	if err := c.Put(k, data); err != nil {
		t.Fatal(err)
	}
	clear(data)
	wantHit(t, c, k, orig, 0, len(orig))
}

func TestMiss(t *testing.T) {
	c := openTest(t, t.TempDir(), MinSlots, Options{})
	k := key("vol", 7, 3)
	data := mustPut(t, c, k, 10000)

	wantMiss(t, c, key("vol", 7, 4), 0, 100)   // other chunk
	wantMiss(t, c, key("vol", 8, 3), 0, 100)   // other record
	wantMiss(t, c, key("other", 7, 3), 0, 100) // other volume
	wantMiss(t, c, k, 9990, 11)                // one byte past the stored length
	wantMiss(t, c, k, 10000, 1)                // starts at the end
	wantMiss(t, c, k, 0, ChunkSize)            // whole slot, chunk is shorter
	if st := c.Stats(); st.Misses != 6 || st.Hits != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v; want 6 misses", st)
	}
	if hit, err := c.ReadAt(k, make([]byte, 1), -1); err == nil || hit {
		t.Errorf("negative offset: %v, %v; want error", hit, err)
	}
	wantHit(t, c, k, data, 9999, 1) // the miss on a short read did not drop the entry
}

func TestPutValidationAndNoOp(t *testing.T) {
	c := openTest(t, t.TempDir(), MinSlots, Options{})
	if err := c.Put(key("v", 1, 0), nil); err == nil {
		t.Error("Put of empty chunk succeeded")
	}
	if err := c.Put(key("v", 1, 0), make([]byte, ChunkSize+1)); err == nil {
		t.Error("Put of oversized chunk succeeded")
	}
	if err := c.Put(Key{Vol: strings.Repeat("x", MaxVolLen+1)}, []byte{1}); err == nil {
		t.Error("Put with oversized volume id succeeded")
	}
	if st := c.Stats(); st.Entries != 0 {
		t.Fatalf("rejected puts stored something: %+v", st)
	}

	k := key("v", 1, 0)
	first := mustPut(t, c, k, 3000)
	if err := c.Put(k, bytes.Repeat([]byte{0xAA}, 5000)); err != nil {
		t.Fatal(err)
	}
	wantHit(t, c, k, first, 0, len(first)) // second Put was a no-op
	if st := c.Stats(); st.Entries != 1 || st.Bytes != 3000 {
		t.Errorf("stats %+v; want 1 entry of 3000 bytes", st)
	}
}

func TestCorruptSubBlockDetected(t *testing.T) {
	for _, tc := range []struct {
		name    string
		off, n  int // the read that touches the corrupt sub-block
		flipAt  int // offset in the chunk of the flipped byte
		cleanAt int // an aligned 4 KiB read of an untouched sub-block
	}{
		{name: "aligned read", off: 3 * SubBlockSize, n: SubBlockSize, flipAt: 3*SubBlockSize + 100, cleanAt: 0},
		{name: "unaligned read", off: 3*SubBlockSize - 50, n: 100, flipAt: 3*SubBlockSize + 10, cleanAt: 5 * SubBlockSize},
		{name: "whole chunk", off: 0, n: ChunkSize, flipAt: ChunkSize - 1, cleanAt: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			logs := &logBuffer{}
			c := openTest(t, dir, MinSlots, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			k := key("vol", 1, 0)
			data := mustPut(t, c, k, ChunkSize)
			other := key("vol", 2, 0)
			otherData := mustPut(t, c, other, ChunkSize)

			flipByte(t, slabPath(dir), int64(slotOf(t, c, k))*ChunkSize+int64(tc.flipAt))

			if tc.flipAt/SubBlockSize != tc.cleanAt/SubBlockSize {
				// Only touched sub-blocks are verified: an intact one still hits.
				wantHit(t, c, k, data, tc.cleanAt, SubBlockSize)
			}
			p := make([]byte, tc.n)
			hit, err := c.ReadAt(k, p, tc.off)
			if hit || err != nil {
				t.Fatalf("read of corrupt sub-block = %v, %v; want miss", hit, err)
			}
			if bytes.Equal(p, data[tc.off:tc.off+tc.n]) {
				t.Fatal("test did not corrupt the range it read")
			}
			if st := c.Stats(); st.Corrupt != 1 || st.Entries != 1 {
				t.Fatalf("stats %+v; want 1 corrupt, entry dropped", st)
			}
			if !strings.Contains(logs.String(), "checksum") {
				t.Errorf("corruption not logged: %q", logs.String())
			}
			// The entry is gone: even the intact sub-blocks now miss, and
			// the second miss is not counted as corruption again.
			wantMiss(t, c, k, tc.cleanAt, SubBlockSize)
			if st := c.Stats(); st.Corrupt != 1 {
				t.Fatalf("Corrupt = %d after re-read; want 1", st.Corrupt)
			}
			wantHit(t, c, other, otherData, 0, ChunkSize) // neighbours unaffected
			// The caller refetches and re-puts; the chunk is served again.
			mustPut(t, c, k, ChunkSize)
			wantHit(t, c, k, data, tc.off, tc.n)
		})
	}
}

func TestCorruptionFoundAfterReopen(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, MinSlots, Options{})
	k := key("vol", 9, 1)
	data := mustPut(t, c, k, 20000)
	si := slotOf(t, c, k)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, slabPath(dir), int64(si)*ChunkSize+19999) // the last stored byte

	c = openTest(t, dir, MinSlots, Options{})
	wantHit(t, c, k, data, 0, 4*SubBlockSize) // first sub-blocks intact
	wantMiss(t, c, k, 19000, 1000)
	if st := c.Stats(); st.Corrupt != 1 || st.Entries != 0 {
		t.Errorf("stats %+v; want 1 corrupt and no entries", st)
	}
}

func TestSizeBound(t *testing.T) {
	const slots = 16
	dir := t.TempDir()
	c := openTest(t, dir, slots, Options{})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	capacity := int64(slots * ChunkSize)
	model := map[Key]int{} // every key ever put → length
	var keys []Key
	puts := 0
	for i := range 1500 {
		if r.IntN(3) != 0 || len(keys) == 0 {
			k := key(fmt.Sprintf("vol%d", r.IntN(3)), uint64(i), uint32(r.IntN(16)))
			n := 1 + r.IntN(ChunkSize)
			if r.IntN(4) == 0 {
				n = ChunkSize
			}
			mustPut(t, c, k, n)
			model[k] = n
			keys = append(keys, k)
			puts++
			wantHit(t, c, k, chunkData(k, n), 0, n) // the newest chunk is always present
		} else {
			k := keys[r.IntN(len(keys))]
			n := model[k]
			off := r.IntN(n)
			p := make([]byte, 1+r.IntN(n-off))
			hit, err := c.ReadAt(k, p, off)
			if err != nil {
				t.Fatal(err)
			}
			if hit && !bytes.Equal(p, chunkData(k, n)[off:off+len(p)]) {
				t.Fatalf("op %d: wrong bytes for %v", i, k)
			}
		}
		st := c.Stats()
		if st.Bytes > capacity || st.Entries > slots || st.Capacity != capacity {
			t.Fatalf("op %d: stats %+v exceed capacity %d", i, st, capacity)
		}
		if i%100 == 0 {
			fi, err := os.Stat(slabPath(dir))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != capacity {
				t.Fatalf("op %d: slab is %d bytes, capacity %d", i, fi.Size(), capacity)
			}
			checkInvariants(t, c)
		}
	}
	st := c.Stats()
	if st.Entries != slots {
		t.Errorf("Entries = %d after %d puts; want full (%d)", st.Entries, puts, slots)
	}
	if st.Evictions != uint64(puts-slots) {
		t.Errorf("Evictions = %d; want %d", st.Evictions, puts-slots)
	}
	if st.Corrupt != 0 {
		t.Errorf("Corrupt = %d under a clean workload", st.Corrupt)
	}
}

func TestClockKeepsReferencedChunks(t *testing.T) {
	c := openTest(t, t.TempDir(), 8, Options{})
	hot := key("v", 1, 0)
	hotData := mustPut(t, c, hot, ChunkSize)
	for i := range 200 {
		wantHit(t, c, hot, hotData, 0, SubBlockSize) // sets the reference bit
		mustPut(t, c, key("v", uint64(1000+i), 0), ChunkSize)
	}
	wantHit(t, c, hot, hotData, 0, ChunkSize)
	// A chunk nobody reads is evicted within one revolution of the hand.
	cold := key("v", 2, 0)
	mustPut(t, c, cold, 100)
	for i := range 8 {
		mustPut(t, c, key("v", uint64(5000+i), 0), 100)
	}
	wantMiss(t, c, cold, 0, 100)
}

func TestReopenKeepsContents(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, 32, Options{IndexSyncInterval: -1})
	want := map[Key][]byte{}
	for i := range 20 {
		k := key(fmt.Sprintf("vol%d", i%3), uint64(i), uint32(i%5))
		want[k] = mustPut(t, c, k, 1+i*3001%ChunkSize)
	}
	before := c.Stats()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(indexPath(dir)); err != nil {
		t.Fatalf("no index after Close: %v", err)
	}

	c = openTest(t, dir, 32, Options{IndexSyncInterval: -1})
	after := c.Stats()
	if after.Entries != before.Entries || after.Bytes != before.Bytes {
		t.Fatalf("after reopen %+v; before %+v", after, before)
	}
	for k, d := range want {
		wantHit(t, c, k, d, 0, len(d))
	}
	if st := c.Stats(); st.Corrupt != 0 || st.Hits != uint64(len(want)) {
		t.Errorf("stats %+v", st)
	}
}

func TestReopenWithOtherSizeStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, 8, Options{})
	mustPut(t, c, key("v", 1, 0), ChunkSize)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openTest(t, dir, 16, Options{})
	if st := c.Stats(); st.Entries != 0 || st.Capacity != 16*ChunkSize {
		t.Fatalf("stats %+v; want empty cache of 16 slots", st)
	}
	if _, err := os.Stat(indexPath(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("index of the old slab still present: %v", err)
	}
	fi, err := os.Stat(slabPath(dir))
	if err != nil || fi.Size() != 16*ChunkSize {
		t.Fatalf("slab size %v, %v; want %d", fi.Size(), err, 16*ChunkSize)
	}
	k := key("v", 2, 0)
	wantHit(t, c, k, mustPut(t, c, k, 777), 0, 777)
}

func TestDeletedSlabStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, 8, Options{})
	k := key("v", 1, 0)
	mustPut(t, c, k, 100)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(slabPath(dir)); err != nil {
		t.Fatal(err)
	}
	c = openTest(t, dir, 8, Options{})
	if st := c.Stats(); st.Entries != 0 {
		t.Fatalf("stats %+v; want empty after the slab was deleted", st)
	}
	wantMiss(t, c, k, 0, 100)
	if st := c.Stats(); st.Corrupt != 0 {
		t.Errorf("Corrupt = %d; the old index should not have been loaded", st.Corrupt)
	}
}

func TestBadIndexStartsEmpty(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, path string)
	}{
		{"flipped byte", func(t *testing.T, path string) { flipByte(t, path, 30) }},
		{"truncated", func(t *testing.T, path string) {
			if err := os.Truncate(path, 40); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty", func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"missing", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openTest(t, dir, 8, Options{})
			k := key("v", 1, 0)
			mustPut(t, c, k, 5000)
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			tc.spoil(t, indexPath(dir))

			logs := &logBuffer{}
			c = openTest(t, dir, 8, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if st := c.Stats(); st.Entries != 0 || st.Bytes != 0 {
				t.Fatalf("stats %+v; want empty", st)
			}
			if !strings.Contains(logs.String(), "starting empty") {
				t.Errorf("no log about starting empty: %q", logs.String())
			}
			wantMiss(t, c, k, 0, 100)
			wantHit(t, c, k, mustPut(t, c, k, 5000), 0, 5000)
		})
	}
}

func TestDeleteDirBetweenRuns(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache", "nested")
	c := openTest(t, dir, 8, Options{})
	k := key("v", 1, 0)
	mustPut(t, c, k, 9000)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
		t.Fatal(err)
	}

	c = openTest(t, dir, 8, Options{})
	if st := c.Stats(); st.Entries != 0 {
		t.Fatalf("stats %+v after deleting the directory; want empty", st)
	}
	wantMiss(t, c, k, 0, 100)
	data := mustPut(t, c, k, 9000)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openTest(t, dir, 8, Options{})
	wantHit(t, c, k, data, 0, len(data))
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, MinSlots, Options{})
	_, err := Open(dir, MinSlots*ChunkSize, Options{Logger: testLogger(t)})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v; want ErrLocked", err)
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("error %q should name the directory and the holder's pid", msg)
	}
	// Regression: it said "locked by another user" when the holder was the
	// same user's other process; it names the process's command line.
	if msg := err.Error(); strings.Contains(msg, "another user") || !strings.Contains(msg, filepath.Base(os.Args[0])) {
		t.Errorf("error %q should name the holding process (%s), not another user", msg, os.Args[0])
	}
	// The failed Open did not disturb the first cache.
	k := key("v", 1, 0)
	wantHit(t, c, k, mustPut(t, c, k, 100), 0, 100)

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := openTest(t, dir, MinSlots, Options{})
	wantHit(t, c2, k, chunkData(k, 100), 0, 100)
}

func TestOpenRejectsNonsense(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{0, -1, MinSlots*ChunkSize - 1, ChunkSize} {
		if c, err := Open(filepath.Join(dir, "c"), size, Options{}); err == nil {
			c.Close()
			t.Errorf("Open with %d bytes succeeded", size)
		}
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Open(filepath.Join(file, "sub"), MinSlots*ChunkSize, Options{}); err == nil {
		c.Close()
		t.Error("Open under a regular file succeeded")
	}
}

func TestSizeRoundsDown(t *testing.T) {
	c, err := Open(t.TempDir(), 5*ChunkSize+ChunkSize-1, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := c.Stats(); st.Capacity != 5*ChunkSize {
		t.Errorf("Capacity = %d; want %d", st.Capacity, 5*ChunkSize)
	}
}

func TestClosed(t *testing.T) {
	c := openTest(t, t.TempDir(), MinSlots, Options{})
	k := key("v", 1, 0)
	mustPut(t, c, k, 10)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v; want ErrClosed", err)
	}
	if _, err := c.ReadAt(k, make([]byte, 10), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v; want ErrClosed", err)
	}
	if err := c.Put(key("v", 2, 0), []byte{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v; want ErrClosed", err)
	}
	if err := c.Sync(); !errors.Is(err, ErrClosed) {
		t.Errorf("Sync after Close: %v; want ErrClosed", err)
	}
}

func TestPeriodicIndexSync(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, MinSlots, Options{IndexSyncInterval: 5 * time.Millisecond})
	k := key("v", 42, 0)
	mustPut(t, c, k, 1234)
	// Wait (bounded) for the background loop to persist the index.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(indexPath(dir)); err == nil {
			if _, entries, err := decodeIndex(b); err == nil && len(entries) == 1 && entries[0].key == k {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("index with the entry not written by the background sync")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNoPeriodicSyncWhenDisabled(t *testing.T) {
	dir := t.TempDir()
	c := openTest(t, dir, MinSlots, Options{IndexSyncInterval: -1})
	mustPut(t, c, key("v", 1, 0), 10)
	if _, err := os.Stat(indexPath(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("index exists before any sync: %v", err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(indexPath(dir)); err != nil {
		t.Errorf("index missing after Sync: %v", err)
	}
}

func TestConcurrentReadersAndWriters(t *testing.T) {
	const (
		slots   = 8
		keys    = 16
		workers = 8
		ops     = 3000
	)
	c := openTest(t, t.TempDir(), slots, Options{IndexSyncInterval: time.Millisecond})
	length := func(k Key) int { return 1 + int(k.Seq*7919)%ChunkSize }
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			p := make([]byte, ChunkSize)
			for range ops {
				k := key("vol", uint64(r.IntN(keys)), 0)
				n := length(k)
				if r.IntN(3) == 0 {
					if err := c.Put(k, chunkData(k, n)); err != nil {
						errs <- err
						return
					}
					continue
				}
				off := r.IntN(n)
				m := 1 + r.IntN(min(n-off, 3*SubBlockSize))
				hit, err := c.ReadAt(k, p[:m], off)
				if err != nil {
					errs <- err
					return
				}
				if hit && !bytes.Equal(p[:m], chunkData(k, n)[off:off+m]) {
					errs <- fmt.Errorf("wrong bytes for %v [%d, %d)", k, off, off+m)
					return
				}
			}
		})
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if st := c.Stats(); st.Bytes > st.Capacity || st.Entries > slots {
				errs <- fmt.Errorf("stats over capacity: %+v", st)
				return
			}
			if err := c.Sync(); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	side.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkInvariants(t, c)
	st := c.Stats()
	t.Logf("stats %+v", st)
	if st.Hits == 0 || st.Evictions == 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v; want hits, evictions and no corruption", st)
	}
}

// TestSlotReusedDuringRead reuses the slot of the chunk being read between
// the pread and its checks, deterministically, through the afterPread hook.
func TestSlotReusedDuringRead(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sameData bool // the new occupant's bytes equal the old one's (e.g. zero chunks)
	}{
		{"different bytes", false},
		{"same bytes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openTest(t, t.TempDir(), MinSlots, Options{IndexSyncInterval: -1})
			victim := key("v", 0, 0)
			victimData := mustPut(t, c, victim, ChunkSize)
			for i := 1; i < MinSlots; i++ {
				k := key("v", uint64(i), 0)
				wantHit(t, c, k, mustPut(t, c, k, ChunkSize), 0, 1)
			}
			// The hand is back at the victim's slot and every reference bit
			// will be set (the victim's by the read below), so the next Put
			// clears them all in one sweep and reuses the victim's slot.
			intruder := key("w", 9, 0)
			intruderData := chunkData(intruder, ChunkSize)
			if tc.sameData {
				intruderData = victimData
			}
			var once sync.Once
			c.afterPread = func() {
				once.Do(func() {
					if err := c.Put(intruder, intruderData); err != nil {
						t.Error(err)
					}
				})
			}
			p := make([]byte, SubBlockSize)
			hit, err := c.ReadAt(victim, p, 0)
			c.afterPread = nil
			if hit || err != nil {
				t.Fatalf("read racing with reuse = %v, %v; want miss", hit, err)
			}
			if slotOf(t, c, intruder) != 0 {
				t.Fatalf("intruder went to slot %d, not the victim's", slotOf(t, c, intruder))
			}
			// Not corruption, and the new occupant is intact.
			if st := c.Stats(); st.Corrupt != 0 || st.Evictions != 1 {
				t.Fatalf("stats %+v; want no corruption, 1 eviction", st)
			}
			wantHit(t, c, intruder, intruderData, 0, ChunkSize)
			wantMiss(t, c, victim, 0, SubBlockSize)
		})
	}
}
