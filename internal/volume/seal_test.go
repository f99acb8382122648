package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// TestSealSummed: the checksums derived from the one CRC pass at seal are
// the ones a direct computation gives: every frame decodes, seg.sums are
// each chunk's sub-block sums, and objectSum is the CRC-32C of the whole
// object, also after a reseal at another slot and for a record without
// data. (A wrong object sum would make S3 refuse every upload.)
func TestSealSummed(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{0, 1, 4095, 4096, format.ChunkSize - 1, format.ChunkSize, format.ChunkSize + 1, 5*format.ChunkSize + 12345, 4 << 20} {
		b := format.NewBuilder(n)
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		// Two appends, so a chunk is built from pieces, summed in part
		// as they are appended.
		seg := &segment{b: b}
		seg.appendData(data[:n/3])
		seg.appendData(data[n/3:])
		rec := &format.Record{Type: format.RecordData, Seq: 7, Epoch: 2, Time: 1, Volume: "v", Durable: 6}
		if n > 0 {
			rec.Extents = []format.Extent{{Off: 0, Len: uint64(n)}}
		}
		var bb *format.Builder
		if n > 0 {
			bb = b
		}
		obj, err := sealSummed(seg, rec, bb, nil, nil, nil)
		if err != nil {
			t.Fatalf("%d bytes: seal: %v", n, err)
		}
		seg.rec = rec
		if got, want := objectSum(seg, obj), format.Checksum(obj); got != want {
			t.Fatalf("%d bytes: object sum %08x, want %08x", n, got, want)
		}
		for i := uint64(0); i*format.ChunkSize < uint64(n); i++ {
			want := format.ChunkLen(uint64(n), i)
			got, err := format.DecodeFrame(obj[format.FramePos(i):], want)
			if err != nil {
				t.Fatalf("%d bytes: frame %d: %v", n, i, err)
			}
			var s cache.Sums
			cache.SubBlockSums(got, &s)
			if s != seg.sums[i] {
				t.Fatalf("%d bytes: chunk %d sub-block sums differ from a direct computation", n, i)
			}
		}
		moved := *rec
		moved.Seq = 9
		obj2, err := format.Reseal(obj, rec.DataLen, &moved)
		if err != nil {
			t.Fatalf("%d bytes: reseal: %v", n, err)
		}
		seg.rec = &moved
		if got, want := objectSum(seg, obj2), format.Checksum(obj2); got != want {
			t.Fatalf("%d bytes: resealed object sum %08x, want %08x", n, got, want)
		}
	}
}

// TestAppendDataSums: the sub-block sums appendData takes as the data
// comes in, completed at seal, are those of the finished chunks, for any
// split of the data into appends (pieces that end mid-sub-block and
// mid-chunk, pieces of one byte, pieces larger than a chunk), also with a
// reused builder, and a second seal (a reseal after a move) sums nothing
// again.
func TestAppendDataSums(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	b := format.NewBuilder(1 << 20)
	for round := range 200 {
		b.Reset()
		seg := &segment{b: b}
		n := rng.IntN(1<<20) + 1
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for p := data; len(p) > 0; {
			var k int
			switch rng.IntN(4) {
			case 0:
				k = 1 + rng.IntN(16)
			case 1:
				k = cache.SubBlockSize * (1 + rng.IntN(4))
			case 2:
				k = 1 + rng.IntN(3*format.ChunkSize)
			default:
				k = 1 + rng.IntN(cache.SubBlockSize)
			}
			k = min(k, len(p))
			if off := seg.appendData(p[:k]); off != uint64(n-len(p)) {
				t.Fatalf("round %d: append at %d returned offset %d", round, n-len(p), off)
			}
			p = p[k:]
			if seg.summed%cache.SubBlockSize != 0 || seg.summed > b.DataLen() || b.DataLen()-seg.summed >= cache.SubBlockSize {
				t.Fatalf("round %d: %d of %d bytes summed while open", round, seg.summed, b.DataLen())
			}
		}
		for range 2 {
			seg.sumTo(b.DataLen())
			if seg.summed != uint64(n) {
				t.Fatalf("round %d: %d of %d bytes summed at seal", round, seg.summed, n)
			}
			chunks := (n + format.ChunkSize - 1) / format.ChunkSize
			if len(seg.sums) != chunks {
				t.Fatalf("round %d: sums for %d chunks, want %d", round, len(seg.sums), chunks)
			}
			for i := range chunks {
				var want cache.Sums
				cache.SubBlockSums(data[i*format.ChunkSize:min(n, (i+1)*format.ChunkSize)], &want)
				if seg.sums[i] != want {
					t.Fatalf("round %d (%d bytes): chunk %d sums differ from a direct computation", round, n, i)
				}
			}
		}
	}
}

// TestReusedBuffersKeepBytes: segment buffers are reused once their record
// has landed and left memory (Volume.spare); every write, read back while
// later ones reuse the buffers (from memory, the cache or the store), after
// a flush and after a reattach without cache, keeps its own bytes.
func TestReusedBuffersKeepBytes(t *testing.T) {
	for name, url := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			const chunk = 64 << 10
			const n = 96
			p := initPool(t, openStore(t, url))
			if _, err := p.Create(ctx, "reuse", CreateOptions{Size: n * chunk}); err != nil {
				t.Fatal(err)
			}
			c := openCache(t, t.TempDir(), 64<<20)
			defer c.Close()
			v, err := p.Open(ctx, "reuse", Options{Cache: c, SegmentBytes: chunk, Uploads: 4, IdleFlush: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, n*chunk)
			rng := rand.New(rand.NewPCG(13, 14))
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			reused := false
			got := make([]byte, chunk)
			for i := range n {
				if err := v.WriteAt(ctx, want[i*chunk:(i+1)*chunk], int64(i)*chunk); err != nil {
					t.Fatal(err)
				}
				if i%8 == 7 {
					if err := v.Flush(ctx); err != nil {
						t.Fatal(err)
					}
				}
				for j := 0; j <= i; j += 1 + i/8 {
					if err := v.ReadAt(ctx, got, int64(j)*chunk); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, want[j*chunk:(j+1)*chunk]) {
						t.Fatalf("after write %d: region %d reads other bytes", i, j)
					}
				}
				v.mu.Lock()
				reused = reused || len(v.spare) > 0
				v.mu.Unlock()
			}
			if !reused {
				t.Fatalf("no segment buffer was ever kept for reuse: the test does not exercise it")
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			r, err := p.Open(ctx, "reuse", Options{ReadOnly: true, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close(ctx)
			if all := readAll(t, r); !bytes.Equal(all, want) {
				t.Fatalf("after reattach the volume differs from what was written")
			}
		})
	}
}

// TestSpareBuildersKeepBurstsAndTrimWhenIdle: uploads that land together
// (bursts of Options.Uploads, held at the store and let go at once) leave
// their builders as spares up to the bound a full write buffer sets, never
// beyond it, so the records after them reuse buffers instead of allocating
// new ones; once writes pause, idleSeal lets all but idleSpareBuilders go.
// Every write keeps its bytes.
func TestSpareBuildersKeepBurstsAndTrimWhenIdle(t *testing.T) {
	ctx := t.Context()
	const chunk = 64 << 10
	const uploads = 8
	const n = 8 * uploads // one record per write: every burst is full
	var (
		mu      sync.Mutex
		armed   bool
		arrived int
		gate    = make(chan struct{})
	)
	store := faultstore.New(openStore(t, "mem://"+t.Name()), faultstore.Hooks{BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
		if op != faultstore.OpPutIfAbsent || !isLogKey(key) {
			return nil
		}
		mu.Lock()
		if !armed { // the fence
			mu.Unlock()
			return nil
		}
		g := gate
		if arrived++; arrived == uploads {
			close(gate)
			arrived, gate = 0, make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-g:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	p := initPool(t, store)
	if _, err := p.Create(ctx, "spares", CreateOptions{Size: n * chunk}); err != nil {
		t.Fatal(err)
	}
	v, err := p.Open(ctx, "spares", Options{SegmentBytes: chunk, BufferBytes: 2 * uploads * chunk, Uploads: uploads, IdleFlush: time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	mu.Lock()
	armed = true
	mu.Unlock()
	want := make([]byte, n*chunk)
	rng := rand.New(rand.NewPCG(15, 16))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	builders := func() (live, spare, bound int) {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.segs), len(v.spare), v.maxBuildersLocked()
	}
	for i := range n {
		if err := v.WriteAt(ctx, want[i*chunk:(i+1)*chunk], int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
		if live, spare, bound := builders(); spare > 0 && live+spare > bound {
			t.Fatalf("after write %d: %d segments and %d spare builders, over the bound %d", i, live, spare, bound)
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The last burst's segments retire once their (no-op) cache fill is
	// done, just after the flush returns.
	deadline := time.Now().Add(10 * time.Second)
	for live, _, _ := builders(); live > 0; live, _, _ = builders() {
		if time.Now().After(deadline) {
			t.Fatalf("%d segments still in memory 10 s after the flush", live)
		}
		time.Sleep(time.Millisecond)
	}
	if _, spare, bound := builders(); spare <= idleSpareBuilders || spare > bound {
		t.Fatalf("%d spare builders kept after a burst of %d uploads landed, want more than %d and at most %d", spare, uploads, idleSpareBuilders, bound)
	}
	if got := readAll(t, v); !bytes.Equal(got, want) {
		t.Fatalf("the volume differs from what was written")
	}
	v.mu.Lock()
	v.lastWrite = v.opts.Clock.Now().Add(-2 * v.opts.IdleFlush)
	v.mu.Unlock()
	v.idleSeal()
	if _, spare, _ := builders(); spare != idleSpareBuilders {
		t.Fatalf("%d spare builders kept after writes paused, want %d", spare, idleSpareBuilders)
	}
}
