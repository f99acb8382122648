package volume

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("URLDISK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

var (
	s3once sync.Mutex
)

// backends returns pool URLs for every store kind: mem, file and a real
// versitygw S3 server (started once per test).
func backends(t *testing.T) map[string]string {
	t.Helper()
	srv := s3server.Start(t)
	return map[string]string{
		"mem":  fmt.Sprintf("mem://%s", filepath.Base(t.Name())),
		"file": "file://" + t.TempDir(),
		"s3":   srv.URL,
	}
}

func openStore(t testing.TB, url string) objstore.Store {
	t.Helper()
	s, err := objstore.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("open store %s: %v", url, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func initPool(t testing.TB, s objstore.Store) *Pool {
	t.Helper()
	p, err := InitPool(context.Background(), s, PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("init pool: %v", err)
	}
	return p
}

func openCache(t testing.TB, dir string, size int64) *cache.Cache {
	t.Helper()
	c, err := cache.Open(dir, size, cache.Options{})
	if err != nil {
		t.Fatalf("open cache: %v", err)
	}
	return c
}
