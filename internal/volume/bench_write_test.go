package volume

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
)

// writeBenchBackends: file://, a real versitygw on loopback ("s3") and the
// same versitygw behind latencyproxy's remote profile ("s3-remote": 30 ms
// before each PUT, 20 ms before each GET, 100 MB/s per stream), so a write
// benchmark and its raw-PUT baseline (BenchmarkRawPut*) are measured under
// the latency a real object store adds. Run with
//
//	go test -run '^$' -bench 'SeqWrite1MFlush|Write4KFlushLatency|RawPut' -benchtime 2s ./internal/volume/
func writeBenchBackends(b *testing.B) map[string]string {
	m := benchBackends(b)
	m["s3-remote"] = remoteURL(b, m["s3"])
	return m
}

// remoteURL starts a remote-profile latencyproxy in front of the endpoint
// of s3 pool URL pool and returns the pool URL through it.
func remoteURL(b *testing.B, pool string) string {
	u, err := url.Parse(pool)
	if err != nil {
		b.Fatalf("parse pool URL: %v", err)
	}
	q := u.Query()
	px, err := latencyproxy.Start(q.Get("endpoint"), latencyproxy.Remote())
	if err != nil {
		b.Fatalf("start latency proxy: %v", err)
	}
	b.Cleanup(func() { px.Close() })
	q.Set("endpoint", px.URL)
	u.RawQuery = q.Encode()
	return u.String()
}

// BenchmarkRawPut4MiBx8 is the raw-store baseline of BenchmarkSeqWrite1MFlush:
// 4 MiB PutIfAbsents of fresh keys from 8 workers, through the same store
// client urldisk uses (objstore), no volume.
func BenchmarkRawPut4MiBx8(b *testing.B) {
	m := writeBenchBackends(b)
	delete(m, "file")
	for name, u := range m {
		b.Run(name, func(b *testing.B) {
			s := openStore(b, u)
			data := make([]byte, 4<<20)
			for i := range data {
				data[i] = byte(i*13 + 5)
			}
			run := rand.Uint64() // each b.N round puts fresh keys
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if err := s.PutIfAbsent(context.Background(), fmt.Sprintf("raw/%x/%d", run, i), data); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// BenchmarkRawPut4K is the raw-store baseline of BenchmarkWrite4KFlushLatency:
// one 4 KiB PutIfAbsent at a time.
func BenchmarkRawPut4K(b *testing.B) {
	m := writeBenchBackends(b)
	delete(m, "file")
	for name, u := range m {
		b.Run(name, func(b *testing.B) {
			s := openStore(b, u)
			data := make([]byte, 4096)
			data[0] = 1
			run := rand.Uint64()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.PutIfAbsent(context.Background(), fmt.Sprintf("raw4k/%x/%d", run, i), data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSeqWrite1MFlushCached is BenchmarkSeqWrite1MFlush with a host
// cache, as `urldisk serve` always has: every landed record is also written
// into the cache (so the writer reads its own data warm).
func BenchmarkSeqWrite1MFlushCached(b *testing.B) {
	m := writeBenchBackends(b)
	delete(m, "file")
	for name, url := range m {
		b.Run(name, func(b *testing.B) {
			c := openCache(b, b.TempDir(), 256<<20)
			defer c.Close()
			benchSeqWrite1M(b, url, Options{Cache: c})
		})
	}
}
