package cache

import (
	"log/slog"
	"testing"
)

// fillBench opens a cache of slots chunks and fills it with full chunks.
func fillBench(b *testing.B, slots int) (*Cache, []Key) {
	b.Helper()
	c := openTest(b, b.TempDir(), slots, Options{IndexSyncInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	keys := make([]Key, slots)
	for i := range keys {
		keys[i] = key("bench-volume", uint64(i), 0)
		mustPut(b, c, keys[i], ChunkSize)
	}
	return c, keys
}

// BenchmarkReadHit4K reads aligned 4 KiB pages of cached chunks: one pread
// straight into the caller's buffer and one CRC-32C.
func BenchmarkReadHit4K(b *testing.B) {
	c, keys := fillBench(b, 64)
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if hit, err := c.ReadAt(keys[i%len(keys)], p, (i%subBlocks)*SubBlockSize); !hit || err != nil {
			b.Fatalf("miss: %v", err)
		}
		i++
	}
}

// BenchmarkReadHit4KUnaligned reads 4 KiB that straddle two sub-blocks: one
// pread of 8 KiB into a pooled buffer, two CRCs and a copy.
func BenchmarkReadHit4KUnaligned(b *testing.B) {
	c, keys := fillBench(b, 64)
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if hit, err := c.ReadAt(keys[i%len(keys)], p, (i%(subBlocks-1))*SubBlockSize+512); !hit || err != nil {
			b.Fatalf("miss: %v", err)
		}
		i++
	}
}

// BenchmarkReadHit4KParallel is BenchmarkReadHit4K from GOMAXPROCS goroutines.
func BenchmarkReadHit4KParallel(b *testing.B) {
	c, keys := fillBench(b, 64)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 4096)
		i := 0
		for pb.Next() {
			if hit, err := c.ReadAt(keys[i%len(keys)], p, (i%subBlocks)*SubBlockSize); !hit || err != nil {
				b.Errorf("miss: %v", err)
				return
			}
			i++
		}
	})
}

// BenchmarkPut inserts full chunks into a full cache, so every Put evicts.
func BenchmarkPut(b *testing.B) {
	c, _ := fillBench(b, 256)
	data := chunkData(key("x", 0, 0), ChunkSize)
	b.SetBytes(ChunkSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.Put(key("bench-volume", uint64(1_000_000+i), 0), data); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func TestReadHitDoesNotAllocate(t *testing.T) {
	c := openTest(t, t.TempDir(), MinSlots, Options{IndexSyncInterval: -1})
	k := key("vol", 1, 0)
	mustPut(t, c, k, ChunkSize)
	p := make([]byte, 4096)
	for _, off := range []int{0, 5 * SubBlockSize, 5*SubBlockSize + 512} {
		if raceEnabled && off%SubBlockSize != 0 {
			continue // the race detector makes sync.Pool drop items at random
		}
		allocs := testing.AllocsPerRun(100, func() {
			if hit, err := c.ReadAt(k, p, off); !hit || err != nil {
				t.Fatalf("miss at %d: %v", off, err)
			}
		})
		if allocs != 0 {
			t.Errorf("ReadAt hit at offset %d: %v allocs; want 0", off, allocs)
		}
	}
}
