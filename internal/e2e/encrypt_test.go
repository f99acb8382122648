package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// keyFile writes a random 32-byte key (hex, as a user would keep it) and
// returns its path and fingerprint.
func keyFile(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	raw := make([]byte, format.KeySize)
	for i := range raw {
		raw[i] = byte(int(name[len(name)-1])*31 + i*7)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(strings.ToUpper(hex.EncodeToString(raw))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := format.ParseKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return path, k.Fingerprint()
}

// TestEncryptedVolumeS3 is issue 13 end to end: the real urldisk binary on
// a real versitygw, data written and read through a real NBD client
// (nbdcopy). A known plaintext written through NBD is in no stored object;
// serve, export and clone with no key or the wrong key fail with an error
// naming the fingerprints and serve nothing; rekey makes the new key read
// it back and refuses the old one; a clone reads with the same key.
func TestEncryptedVolumeS3(t *testing.T) {
	srv := s3server.Start(t)
	dir := t.TempDir()
	k1, fp1 := keyFile(t, dir, "k1")
	k2, fp2 := keyFile(t, dir, "k2")
	if fp1 == fp2 {
		t.Fatal("the two test keys are the same key")
	}
	vol := volURL(srv.URL, "sealed")
	out := mustRun(t, "urldisk", "create", vol, "--size", "8M", "--encrypt", "--key-file", k1)
	if !strings.Contains(out, "encrypted: data key wrapped by key "+fp1) {
		t.Fatalf("create --encrypt: %q", out)
	}

	unit := []byte("URLDISK-E2E-CANARY:the-store-must-never-see-this;")
	canary := bytes.Repeat(unit, (8<<20)/len(unit)+1)[:8<<20]
	img := filepath.Join(dir, "in.img")
	if err := os.WriteFile(img, canary, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, vol, "--key-file", k1)
	mustRun(t, "nbdcopy", img, s.URI("sealed"))
	s.StopOK()

	// Every object in the bucket (descriptor, log, snapshots, ...).
	ctx := context.Background()
	store, err := objstore.Open(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	scan := func() {
		t.Helper()
		n := 0
		if err := store.List(ctx, "", func(oi objstore.ObjectInfo) error {
			b, err := store.Get(ctx, oi.Key)
			if err != nil {
				return err
			}
			n++
			if bytes.Contains(b, canary[:24]) {
				t.Errorf("object %s holds the plaintext", oi.Key)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n < 4 {
			t.Fatalf("scanned only %d objects", n)
		}
	}
	scan()

	readBack := func(url, name, key string) {
		t.Helper()
		s := startServe(t, url, "--read-only", "--key-file", key)
		got, err := os.ReadFile(copyOut(t, s.URI(name)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, canary) {
			t.Fatalf("%s read back differs from what was written", name)
		}
		s.StopOK()
	}
	readBack(vol, "sealed", k1)

	// No key, wrong key: serve fails before ready; export and clone fail.
	sockDir, err := os.MkdirTemp("", "ude2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	refused := func(what, key string, wants ...string) {
		t.Helper()
		keyArgs := []string{}
		if key != "" {
			keyArgs = []string{"--key-file", key}
		}
		serve := append([]string{"serve", "--listen", "unix:" + filepath.Join(sockDir, "x.sock"), "--cache", filepath.Join(t.TempDir(), "c"), "--cache-size", "64M", vol}, keyArgs...)
		r := runServeBriefly(t, serve...)
		if r.code == 0 || r.code == -1 || strings.Contains(r.stdout, "ready") || strings.Contains(r.stdout, "serving") {
			t.Fatalf("serve with %s: want an exit before serving:\n%s", what, r)
		}
		exp := run(t, "urldisk", append([]string{"export", vol, filepath.Join(t.TempDir(), "x.img")}, keyArgs...)...)
		cl := run(t, "urldisk", append([]string{"clone", vol, volURL(srv.URL, "stolen")}, keyArgs...)...)
		for _, r := range []result{r, exp, cl} {
			if r.code == 0 {
				t.Fatalf("%s: succeeded:\n%s", what, r)
			}
			for _, w := range wants {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%s: stderr does not say %q:\n%s", what, w, r)
				}
			}
		}
	}
	refused("no key", "", "no key was given", fp1)
	refused("the wrong key", k2, "wrong key", fp1, fp2)

	// A clone shares the data key.
	mustRun(t, "urldisk", "clone", vol, volURL(srv.URL, "kid"), "--key-file", k1)
	readBack(volURL(srv.URL, "kid"), "kid", k1)

	// Rekey: k2 reads, k1 is refused.
	out = mustRun(t, "urldisk", "rekey", vol, "--key-file", k1, "--new-key-file", k2)
	if !strings.Contains(out, fp2) {
		t.Fatalf("rekey: %q", out)
	}
	readBack(vol, "sealed", k2)
	refused("the old key after rekey", k1, "wrong key", fp2, fp1)
	scan()
}
