package objstore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
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
	t.Run("overwriting", func(t *testing.T) {
		checkProbe(t, overwritingStore{open(t, &objstore.Opener{}, "mem://")}, false)
	})
}
