package volume

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// benchBackends: file:// and a real versitygw. Run with
//
//	go test -run '^$' -bench . -benchtime 2s ./internal/volume/
func benchBackends(b *testing.B) map[string]string {
	srv := s3server.Start(b)
	return map[string]string{"file": "file://" + b.TempDir(), "s3": srv.URL}
}

func benchVolume(b *testing.B, url string, size uint64, o Options) (*Pool, *Volume) {
	ctx := context.Background()
	p := initPool(b, openStore(b, url))
	name := fmt.Sprintf("b%d", rand.Uint32())
	if _, err := p.Create(ctx, name, CreateOptions{Size: size}); err != nil {
		b.Fatal(err)
	}
	o.Logger = testLogger(b)
	v, err := p.Open(ctx, name, o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close(ctx) })
	return p, v
}

func BenchmarkRandRead4KWarm(b *testing.B) {
	for name, url := range benchBackends(b) {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			const size = 256 << 20
			c := openCache(b, b.TempDir(), 512<<20)
			defer c.Close()
			_, v := benchVolume(b, url, size, Options{Cache: c})
			buf := make([]byte, 1<<20)
			for i := range buf {
				buf[i] = byte(i*7 + 1)
			}
			for off := int64(0); off < size; off += int64(len(buf)) {
				if err := v.WriteAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			p := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(1, 2))
			b.ReportAllocs()
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.ReadAt(ctx, p, int64(rng.IntN(size/4096))*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// fillVolume writes every byte of v, 1 MiB at a time (no MiB like
// another, none all zero), and flushes.
func fillVolume(b *testing.B, v *Volume, size int64) {
	ctx := context.Background()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(i*7 + int(off>>20) + 1)
		}
		if err := v.WriteAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSeqRead1MCold reads a written volume sequentially in 1 MiB reads
// through a read-only attach with an empty cache (readahead, GETs, frame
// checks, cache fills): the cold path. A fresh attach and cache are made,
// outside the timer, whenever the volume has been read through.
func BenchmarkSeqRead1MCold(b *testing.B) {
	for name, url := range benchBackends(b) {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			const size = 128 << 20
			p, v := benchVolume(b, url, size, Options{})
			fillVolume(b, v, size)
			buf := make([]byte, 1<<20)
			var ro *Volume
			var c io.Closer
			reopen := func() {
				if ro != nil {
					ro.Close(ctx)
					c.Close()
				}
				cc := openCache(b, b.TempDir(), 256<<20)
				var err error
				if ro, err = p.Open(ctx, v.Desc().Name, Options{ReadOnly: true, Cache: cc, Logger: testLogger(b)}); err != nil {
					b.Fatal(err)
				}
				c = cc
			}
			reopen()
			defer func() { ro.Close(ctx); c.Close() }()
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			off := int64(0)
			for i := 0; i < b.N; i++ {
				if off == size {
					b.StopTimer()
					reopen()
					off = 0
					b.StartTimer()
				}
				if err := ro.ReadAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
				off += int64(len(buf))
			}
		})
	}
}

func BenchmarkSeqWrite1MFlush(b *testing.B) {
	for name, url := range writeBenchBackends(b) {
		b.Run(name, func(b *testing.B) { benchSeqWrite1M(b, url, Options{}) })
	}
}

// benchSeqWrite1M writes 1 MiB blocks sequentially (wrapping at 1 GiB)
// b.N times, then flushes once.
func benchSeqWrite1M(b *testing.B, url string, opts Options) {
	ctx := context.Background()
	const size = 1 << 30
	_, v := benchVolume(b, url, size, opts)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*13 + 5)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf[0] = byte(i) // never all zero, never identical
		if err := v.WriteAt(ctx, buf, int64(i%(size>>20))<<20); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkWrite4KFlushLatency(b *testing.B) {
	for name, url := range writeBenchBackends(b) {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			_, v := benchVolume(b, url, 64<<20, Options{})
			p := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(3, 4))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p[0] = byte(i) | 1
				if err := v.WriteAt(ctx, p, int64(rng.IntN(64<<8))*4096); err != nil {
					b.Fatal(err)
				}
				if err := v.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAttach10kRecords measures attach (replay + fence) of a volume
// whose log holds 10,000 records (snapshots every 256, as by default).
func BenchmarkAttach10kRecords(b *testing.B) {
	for name, url := range benchBackends(b) {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			// One record per 4 KiB write: SegmentBytes seals every write.
			p, v := benchVolume(b, url, 64<<20, Options{IdleFlush: -1, SegmentBytes: 4096, Uploads: 16})
			name := v.Desc().Name
			p4 := make([]byte, 4096)
			start := time.Now()
			for i := 0; i < 10000; i++ {
				p4[0] = byte(i) | 1
				if err := v.WriteAt(ctx, p4, int64(i%16384)*4096); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Close(ctx); err != nil {
				b.Fatal(err)
			}
			b.Logf("wrote 10000 records in %v", time.Since(start))
			in, err := p.Info(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("%s: %d records, snapshot at %d", name, in.Records, in.SnapSeq)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := openCache(b, b.TempDir(), 64<<20)
				v2, err := p.Open(ctx, name, Options{Cache: c})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				v2.Close(ctx)
				c.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkCheckpointClone measures checkpoint (on a serving writer) and
// clone time for sparse 1 GiB and 32 GiB volumes and for a volume with
// 10 GiB written (set URLDISK_BENCH_WRITTEN_GIB to change; 0 skips writing).
func BenchmarkCheckpointClone(b *testing.B) {
	writtenGiB := 10
	if s := os.Getenv("URLDISK_BENCH_WRITTEN_GIB"); s != "" {
		writtenGiB, _ = strconv.Atoi(s)
	}
	type tc struct {
		name    string
		size    uint64
		written int64
	}
	cases := []tc{{"sparse-1GiB", 1 << 30, 0}, {"sparse-32GiB", 32 << 30, 0}}
	if writtenGiB > 0 {
		cases = append(cases, tc{fmt.Sprintf("written-%dGiB", writtenGiB), uint64(writtenGiB) << 30, int64(writtenGiB) << 30})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			p, v := benchVolume(b, "file://"+b.TempDir(), c.size, Options{})
			buf := make([]byte, 4<<20)
			for i := range buf {
				buf[i] = byte(i*31 + 7)
			}
			for off := int64(0); off < c.written; off += int64(len(buf)) {
				buf[0]++
				if err := v.WriteAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
			}
			// A little scattered data so the map is not trivially empty.
			for i := 0; i < 100; i++ {
				if err := v.WriteAt(ctx, buf[:4096], int64(i)*int64(c.size/100)); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			n := 0
			b.Run("checkpoint", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					n++
					if _, err := v.Checkpoint(ctx, fmt.Sprintf("c%d", n)); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("clone", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					n++
					if _, err := p.Clone(ctx, v.Desc().Name, Point{}, fmt.Sprintf("%s-k%d", v.Desc().Name, n)); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkColdReadRemote measures cold reads on the "remote" profile: a
// real versitygw behind latencyproxy.Remote (20 ms before each GET, 100 MB/s
// per response stream), side by side with the raw store through the same
// proxy. Sub-benchmarks: raw-get-4MiB-x8 (8 workers of 4 MiB ranged GETs:
// the throughput to reach), seq1M-qd8 (urldisk, 1 MiB sequential reads by
// 8 concurrent readers, fresh attach and cache per pass), raw-get-4k and
// rand4k-qd1 (p50 of one ranged GET vs a cold 4 KiB random read). Run with
//
//	flock /tmp/urldisk-bench.lock go test -run '^$' -bench ColdReadRemote -benchtime 2s ./internal/volume/
func BenchmarkColdReadRemote(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	srv := s3server.Start(b)
	// Written on loopback: only the reads are measured through the proxy.
	_, w := benchVolume(b, srv.URL, size, Options{})
	name := w.Desc().Name
	fillVolume(b, w, size)
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	proxy, err := latencyproxy.Start(srv.Endpoint, latencyproxy.Remote())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proxy.Close() })
	u, err := url.Parse(srv.URL)
	if err != nil {
		b.Fatal(err)
	}
	q := u.Query()
	q.Set("endpoint", proxy.URL)
	u.RawQuery = q.Encode()
	store := openStore(b, u.String())
	p, err := OpenPool(ctx, store, PoolOptions{Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	var logKeys []string
	if err := store.List(ctx, "", func(oi objstore.ObjectInfo) error {
		if strings.Contains(oi.Key, "/log/") && oi.Size >= 4<<20 {
			logKeys = append(logKeys, oi.Key)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	if len(logKeys) == 0 {
		b.Fatal("no 4 MiB records listed")
	}
	// coldOpen attaches with an empty cache; close detaches and deletes it.
	coldOpen := func(b *testing.B) (v *Volume, close func()) {
		dir, err := os.MkdirTemp(b.TempDir(), "cache")
		if err != nil {
			b.Fatal(err)
		}
		c := openCache(b, dir, 512<<20)
		if v, err = p.Open(ctx, name, Options{ReadOnly: true, Cache: c, Logger: testLogger(b)}); err != nil {
			b.Fatal(err)
		}
		return v, func() { v.Close(ctx); c.Close(); os.RemoveAll(dir) }
	}
	p50 := func(b *testing.B, d []time.Duration) {
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	}

	b.Run("raw-get-4MiB-x8", func(b *testing.B) {
		var next atomic.Int64
		b.SetBytes(4 << 20)
		b.ResetTimer()
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := make([]byte, 4<<20)
				for {
					i := next.Add(1) - 1
					if i >= int64(b.N) {
						return
					}
					if _, err := store.GetRange(ctx, logKeys[i%int64(len(logKeys))], 0, p); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
	b.Run("seq1M-qd8", func(b *testing.B) {
		b.SetBytes(1 << 20)
		b.ReportAllocs()
		b.ResetTimer()
		for done := 0; done < b.N; {
			b.StopTimer()
			v, closeV := coldOpen(b)
			b.StartTimer()
			n := min(b.N-done, size>>20)
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := make([]byte, 1<<20)
					for {
						i := next.Add(1) - 1
						if i >= int64(n) {
							return
						}
						if err := v.ReadAt(ctx, p, i<<20); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			done += n
			b.StopTimer()
			closeV()
			b.StartTimer()
		}
	})
	rng := rand.New(rand.NewPCG(9, 10))
	b.Run("raw-get-4k", func(b *testing.B) {
		p := make([]byte, 4096+8)
		d := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := store.GetRange(ctx, logKeys[rng.IntN(len(logKeys))], int64(rng.IntN(60))<<16, p); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		p50(b, d)
	})
	b.Run("rand4k-qd1", func(b *testing.B) {
		v, closeV := coldOpen(b)
		defer func() { closeV() }()
		p := make([]byte, 4096)
		// Distinct 64 KiB chunks in random order: every read is cold.
		chunks := rng.Perm(size >> 16)
		d := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i > 0 && i%len(chunks) == 0 {
				b.StopTimer()
				closeV()
				v, closeV = coldOpen(b)
				b.StartTimer()
			}
			t0 := time.Now()
			if err := v.ReadAt(ctx, p, int64(chunks[i%len(chunks)])<<16); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		p50(b, d)
	})
}
