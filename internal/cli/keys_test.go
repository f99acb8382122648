package cli

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/volume"
)

// TestKeySources: a key file (raw or hex), a key command's output and
// $URLDISK_KEY all give the same key; a bad key or a failing command is a
// clear error that names the flag and never the material.
func TestKeySources(t *testing.T) {
	ctx := context.Background()
	raw := []byte("0123456789abcdef0123456789ABCDEF")
	want, err := volume.ParseKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rawFile, hexFile, badFile := filepath.Join(dir, "raw"), filepath.Join(dir, "hex"), filepath.Join(dir, "bad")
	os.WriteFile(rawFile, raw, 0o600)
	os.WriteFile(hexFile, []byte(hex.EncodeToString(raw)+"\n"), 0o600)
	os.WriteFile(badFile, []byte("s3cr3t-but-too-short\n"), 0o600)
	t.Setenv("UD_TEST_KEY", base64.StdEncoding.EncodeToString(raw))

	for name, k := range map[string]keyFlags{
		"raw file": {file: rawFile},
		"hex file": {file: hexFile},
		"command":  {command: "cat " + hexFile},
		"env":      {},
	} {
		src := k.source("", "UD_TEST_KEY")
		if src == nil {
			t.Fatalf("%s: no source", name)
		}
		got, err := src(ctx)
		if err != nil || got.Fingerprint() != want.Fingerprint() {
			t.Fatalf("%s: %v %v", name, got, err)
		}
	}
	if (&keyFlags{}).source("", "UD_TEST_UNSET") != nil {
		t.Fatal("a source without any key")
	}
	for name, c := range map[string]struct {
		k    keyFlags
		want string
	}{
		"bad file":       {keyFlags{file: badFile}, "--key-file " + badFile + ": bad key"},
		"missing file":   {keyFlags{file: filepath.Join(dir, "nope")}, "--key-file: open"},
		"bad output":     {keyFlags{command: "cat " + badFile}, "output: bad key"},
		"failed command": {keyFlags{command: "exit 3"}, "exit status 3"},
		"both":           {keyFlags{file: rawFile, command: "true"}, "pick one"},
	} {
		_, err := c.k.source("", "UD_TEST_KEY")(ctx)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v, want %q", name, err, c.want)
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), string(raw)) {
			t.Fatalf("%s: key material in %v", name, err)
		}
	}
}
