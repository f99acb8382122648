package objstore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Temporary files, such as those a crash leaves behind, are never objects.
func TestFileHidesTempFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := openFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(bgCtx, "log/0001", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tmpPrefix + "123", "log/" + tmpPrefix + "456"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := s.List(bgCtx, "", func(oi ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "log/0001" {
		t.Fatalf("List = %v, want [log/0001]", keys)
	}
	if _, err := s.Get(bgCtx, "log/"+tmpPrefix+"456"); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Get of a temporary file: err = %v, want ErrBadKey", err)
	}
}

// Objects are private to the serving user, and written durably in place.
func TestFileLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := openFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutIfAbsent(bgCtx, "vols/v1/log/0000000000000001", []byte("rec")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "vols", "v1", "log", "0000000000000001"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 3 {
		t.Fatalf("object file mode %v size %d, want 0600 and 3", fi.Mode().Perm(), fi.Size())
	}
	// A path through an object: an error, not a crash or a silent success.
	if err := s.Put(bgCtx, "vols/v1/log/0000000000000001/x", []byte("y")); err == nil {
		t.Fatal("Put below an object succeeded")
	}
}
