package objstore_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/azureserver"
	"github.com/urldisk/urldisk/internal/testutil/gcsserver"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// overwritingStore is a store without conditional create: PutIfAbsent
// silently overwrites, like an S3 implementation ignoring If-None-Match.
type overwritingStore struct{ objstore.Store }

func (s overwritingStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return s.Put(ctx, key, data)
}

func checkProbe(t *testing.T, s objstore.Store, want bool) {
	t.Helper()
	got, err := objstore.Probe(t.Context(), s)
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if got != want {
		t.Fatalf("Probe = %v, want %v", got, want)
	}
	var left []string
	if err := s.List(t.Context(), "", func(oi objstore.ObjectInfo) error { left = append(left, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("Probe left objects behind: %v", left)
	}
}

func TestProbe(t *testing.T) {
	t.Run("mem", func(t *testing.T) { checkProbe(t, open(t, &objstore.Opener{}, "mem://"), true) })
	t.Run("file", func(t *testing.T) {
		checkProbe(t, open(t, &objstore.Opener{}, "file://"+filepath.Join(t.TempDir(), "p")), true)
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3server.Start(t)
		checkProbe(t, open(t, &objstore.Opener{}, srv.URL), true)
	})
	t.Run("minio", func(t *testing.T) {
		srv := s3server.StartMinIO(t)
		checkProbe(t, open(t, &objstore.Opener{}, srv.URL), true)
	})
	t.Run("gs", func(t *testing.T) {
		srv := gcsserver.Start(t)
		checkProbe(t, open(t, &objstore.Opener{}, srv.NewBucket(t)), true)
	})
	t.Run("azblob", func(t *testing.T) {
		srv := azureserver.Start(t)
		checkProbe(t, open(t, &objstore.Opener{}, srv.NewBucket(t)), true)
	})
	t.Run("overwriting", func(t *testing.T) {
		checkProbe(t, overwritingStore{open(t, &objstore.Opener{}, "mem://")}, false)
	})
}

// TestProbeDeletesStaleProbes: a probe object left by a crashed probe
// (older than StaleProbeAge) is deleted by the next probe; a young one,
// maybe a probe running now elsewhere, is left alone.
func TestProbeDeletesStaleProbes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "p")
	s := open(t, &objstore.Opener{}, "file://"+dir)
	stale, young := objstore.ProbePrefix+"CRASHED", objstore.ProbePrefix+"RUNNING"
	for _, k := range []string{stale, young} {
		if err := s.PutIfAbsent(t.Context(), k, []byte("probe: first "+k)); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-objstore.StaleProbeAge - time.Minute)
	if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(stale)), old, old); err != nil {
		t.Fatal(err)
	}
	if ok, err := objstore.Probe(t.Context(), s); err != nil || !ok {
		t.Fatalf("Probe = %v, %v; want true, nil", ok, err)
	}
	var left []string
	if err := s.List(t.Context(), objstore.ProbePrefix, func(oi objstore.ObjectInfo) error { left = append(left, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(left, []string{young}) {
		t.Fatalf("probe objects after Probe = %v, want only %s", left, young)
	}
}

// TestDescribeS3 names the bucket, the endpoint's host and the server
// software, and no credentials.
func TestDescribeS3(t *testing.T) {
	srv := s3server.Start(t)
	s := open(t, &objstore.Opener{}, srv.URL)
	got := objstore.Describe(t.Context(), s)
	host := strings.TrimPrefix(srv.Endpoint, "http://")
	if !strings.HasPrefix(got, `s3 bucket "urldisk-test-1" at `+host) || !strings.Contains(got, `(server "VERSITYGW")`) {
		t.Errorf("Describe = %q, want the bucket, %s and the server (VERSITYGW)", got, host)
	}
	if strings.Contains(got, s3server.SecretKey+"\"") || strings.Contains(got, "AWS_") {
		t.Errorf("Describe = %q names credentials", got)
	}
}
