package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// testLogger sends the cache's logs to the test's output (shown on failure
// or with -v).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTest opens a cache of slots chunks in dir and closes it (if still open)
// at cleanup, after checking its invariants.
func openTest(t testing.TB, dir string, slots int, opts Options) *Cache {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	c, err := Open(dir, int64(slots)*ChunkSize, opts)
	if err != nil {
		t.Fatalf("Open(%s, %d slots): %v", dir, slots, err)
	}
	t.Cleanup(func() {
		checkInvariants(t, c)
		if err := c.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// checkInvariants verifies the index/slot invariants documented on Cache.
func checkInvariants(t testing.TB, c *Cache) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	used := 0
	var bytes int64
	for i := range c.slots {
		s := &c.slots[i]
		if s.state == slotFree {
			continue
		}
		used++
		if si, ok := c.index[s.key]; !ok || int(si) != i {
			t.Errorf("slot %d holds %v (state %d) but index says %d, %v", i, s.key, s.state, si, ok)
		}
		if s.length < 1 || s.length > ChunkSize {
			t.Errorf("slot %d: length %d", i, s.length)
		}
		if s.state == slotReady {
			bytes += int64(s.length)
		}
	}
	if used != len(c.index) {
		t.Errorf("%d slots in use, index has %d entries", used, len(c.index))
	}
	if bytes != c.bytes {
		t.Errorf("bytes = %d, slots sum to %d", c.bytes, bytes)
	}
	if c.bytes > c.capacity {
		t.Errorf("bytes %d > capacity %d", c.bytes, c.capacity)
	}
}

// key returns a test key.
func key(vol string, seq uint64, chunk uint32) Key { return Key{Vol: vol, Seq: seq, Chunk: chunk} }

// chunkData returns length deterministic bytes derived from k, different for
// every key.
func chunkData(k Key, length int) []byte {
	h := fnv.New64a()
	h.Write([]byte(k.String()))
	r := rand.New(rand.NewPCG(h.Sum64(), uint64(length)))
	b := make([]byte, (length+7)&^7)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:length]
}

// mustPut puts chunkData(k, length) and returns it.
func mustPut(t testing.TB, c *Cache, k Key, length int) []byte {
	t.Helper()
	data := chunkData(k, length)
	if err := c.Put(k, data); err != nil {
		t.Fatalf("Put(%v, %d bytes): %v", k, length, err)
	}
	return data
}

// wantHit reads [off, off+n) of k and fails unless it is a hit equal to
// want[off:off+n].
func wantHit(t testing.TB, c *Cache, k Key, want []byte, off, n int) {
	t.Helper()
	p := make([]byte, n)
	hit, err := c.ReadAt(k, p, off)
	if err != nil || !hit {
		t.Fatalf("ReadAt(%v, off %d, len %d) = %v, %v; want hit", k, off, n, hit, err)
	}
	if !bytes.Equal(p, want[off:off+n]) {
		t.Fatalf("ReadAt(%v, off %d, len %d) returned wrong bytes", k, off, n)
	}
}

// wantMiss reads [off, off+n) of k and fails unless it is a clean miss.
func wantMiss(t testing.TB, c *Cache, k Key, off, n int) {
	t.Helper()
	p := make([]byte, n)
	hit, err := c.ReadAt(k, p, off)
	if err != nil || hit {
		t.Fatalf("ReadAt(%v, off %d, len %d) = %v, %v; want miss", k, off, n, hit, err)
	}
}

// slotOf returns the slot holding k, failing if k is not stored.
func slotOf(t testing.TB, c *Cache, k Key) int {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	si, ok := c.index[k]
	if !ok {
		t.Fatalf("%v not in index", k)
	}
	return int(si)
}

// flipByte inverts one byte of the file at path through a separate file
// descriptor, the way a bad disk or a stray writer would.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// logBuffer is a concurrency-safe buffer for capturing log output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func slabPath(dir string) string  { return filepath.Join(dir, slabFileName) }
func indexPath(dir string) string { return filepath.Join(dir, indexFileName) }
