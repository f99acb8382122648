package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// volInfo is the part of `urldisk info --json` these tests read.
type volInfo struct {
	StoredBytes  int64  `json:"stored_bytes"`
	LogicalBytes int64  `json:"logical_bytes"`
	Compression  string `json:"compression"`
	Encrypted    bool   `json:"encrypted"`
}

func infoOf(t *testing.T, vol string, args ...string) volInfo {
	t.Helper()
	var in volInfo
	out := mustRun(t, "urldisk", append([]string{"info", vol, "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	return in
}

// TestCompressedVolumeS3 is issue 13's compression end to end: the real
// binary on a real versitygw, `create --compress --encrypt`, a
// compressible image written through NBD (nbdcopy) and read back, the
// stored bytes a fraction of the logical ones (info), the plaintext in no
// stored object, export giving the image back, a clone inheriting
// compression and reading back, verify --deep clean; `create --compress`
// alone compresses too.
func TestCompressedVolumeS3(t *testing.T) {
	srv := s3server.Start(t)
	dir := t.TempDir()
	k1, _ := keyFile(t, dir, "k1")
	unit := []byte("URLDISK-E2E-COMPRESS-CANARY:compressible text, stored in fewer bytes;")
	canary := bytes.Repeat(unit, (8<<20)/len(unit)+1)[:8<<20]
	img := filepath.Join(dir, "in.img")
	if err := os.WriteFile(img, canary, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"both", []string{"--compress", "--encrypt", "--key-file", k1}},
		{"lz4", []string{"--compress=lz4"}},
	} {
		vol := volURL(srv.URL, c.name)
		out := mustRun(t, "urldisk", append([]string{"create", vol, "--size", "8M"}, c.args...)...)
		if !strings.Contains(out, "compressed: lz4") {
			t.Fatalf("create %v: %q", c.args, out)
		}
		keyArgs := []string{}
		if c.name == "both" {
			keyArgs = []string{"--key-file", k1}
		}
		s := startServe(t, append([]string{vol}, keyArgs...)...)
		mustRun(t, "nbdcopy", img, s.URI(c.name))
		s.StopOK()

		in := infoOf(t, vol, keyArgs...)
		if in.Compression != "lz4" || in.Encrypted != (c.name == "both") {
			t.Fatalf("%s: info %+v", c.name, in)
		}
		if in.LogicalBytes < 8<<20 || in.StoredBytes > in.LogicalBytes/4 {
			t.Fatalf("%s: info stored %d, logical %d: want at least 8 MiB logical in under a quarter of that stored", c.name, in.StoredBytes, in.LogicalBytes)
		}
		readBackAll := func(url, name string) {
			t.Helper()
			s := startServe(t, append([]string{url, "--read-only"}, keyArgs...)...)
			got, err := os.ReadFile(copyOut(t, s.URI(name)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, canary) {
				t.Fatalf("%s read back differs from what was written", name)
			}
			s.StopOK()
		}
		readBackAll(vol, c.name)
		exported := filepath.Join(t.TempDir(), c.name+".img")
		mustRun(t, "urldisk", append([]string{"export", vol, exported}, keyArgs...)...)
		if got, err := os.ReadFile(exported); err != nil || !bytes.Equal(got, canary) {
			t.Fatalf("export of %s differs from what was written (err %v)", c.name, err)
		}
		kid := c.name + "-kid"
		mustRun(t, "urldisk", append([]string{"clone", vol, volURL(srv.URL, kid)}, keyArgs...)...)
		if in := infoOf(t, volURL(srv.URL, kid), keyArgs...); in.Compression != "lz4" {
			t.Fatalf("clone of %s: compression %q, want inherited lz4", c.name, in.Compression)
		}
		readBackAll(volURL(srv.URL, kid), kid)
		out = mustRun(t, "urldisk", append([]string{"verify", vol, "--deep"}, keyArgs...)...)
		if !strings.Contains(out, "OK") {
			t.Fatalf("verify --deep %s: %s", c.name, out)
		}
	}

	// Compressed and encrypted: the plaintext is in no stored object.
	ctx := context.Background()
	store, err := objstore.Open(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	bothLog := "/" + infoID(t, volURL(srv.URL, "both"), k1) + "/log/"
	n := 0
	if err := store.List(ctx, "", func(oi objstore.ObjectInfo) error {
		if !strings.Contains(oi.Key, bothLog) {
			return nil
		}
		b, err := store.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, unit[:24]) {
			t.Errorf("object %s of the encrypted volume holds the plaintext", oi.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n < 2 { // fences and at least one data record
		t.Fatalf("scanned only %d log objects of the encrypted volume", n)
	}
}

// infoID returns the volume id `urldisk info` reports.
func infoID(t *testing.T, vol, key string) string {
	t.Helper()
	var in struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "urldisk", "info", vol, "--json", "--key-file", key)), &in); err != nil || in.ID == "" {
		t.Fatalf("info --json id: %v", err)
	}
	return in.ID
}
