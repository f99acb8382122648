package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// nbdinfoJSON is the part of `nbdinfo --json` output the tests check.
type nbdinfoJSON struct {
	Protocol string           `json:"protocol"`
	TLS      bool             `json:"TLS"`
	Exports  []map[string]any `json:"exports"`
}

func nbdinfo(t *testing.T, args ...string) nbdinfoJSON {
	t.Helper()
	out := mustRun(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var info nbdinfoJSON
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parse nbdinfo --json: %v\n%s", err, out)
	}
	return info
}

// TestNbdinfo checks what serve advertises: export names, sizes,
// descriptions, block sizes and flags, read-write and read-only, and the
// export list of a server with two volumes.
func TestNbdinfo(t *testing.T) {
	pool := filePool(t)
	alpha, beta := volURL(pool, "alpha"), volURL(pool, "beta")
	createVolume(t, alpha, "64M")
	// beta is created by serve --create (alpha exists and is kept as is).
	s := startServe(t, alpha, beta, "--create", "--size", "32M")

	if got := strings.Join(s.Names, ","); got != "alpha,beta" {
		t.Errorf("serve printed exports %q, want alpha,beta", got)
	}
	for _, name := range []string{"alpha", "beta"} {
		want := "nbd+unix:///" + name + "?socket=" + s.Socket
		if got := s.URI(name); got != want {
			t.Errorf("URI of %s = %q, want %q", name, got, want)
		}
	}

	common := map[string]any{
		"block_size_minimum":   float64(1),
		"block_size_preferred": float64(4096),
		"block_size_maximum":   float64(32 << 20),
		"can_flush":            true,
		"can_fua":              true,
	}
	rw := map[string]any{"is_read_only": false, "can_trim": true, "can_zero": true}
	ro := map[string]any{"is_read_only": true, "can_trim": false, "can_zero": false}
	check := func(info nbdinfoJSON, name string, size int64, mode string, flags map[string]any) {
		t.Helper()
		if info.Protocol != "newstyle-fixed" || info.TLS || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo %s: protocol %q TLS %v, %d exports", name, info.Protocol, info.TLS, len(info.Exports))
		}
		e := info.Exports[0]
		want := map[string]any{"export-name": name, "export-size": float64(size)}
		for _, m := range []map[string]any{common, flags} {
			for k, v := range m {
				want[k] = v
			}
		}
		for k, v := range want {
			if e[k] != v {
				t.Errorf("nbdinfo %s: %s = %v, want %v", name, k, e[k], v)
			}
		}
		desc, _ := e["description"].(string)
		if !strings.Contains(desc, "/"+name) || !strings.Contains(desc, mode) {
			t.Errorf("nbdinfo %s: description %q, want the volume URL and %q", name, desc, mode)
		}
	}
	check(nbdinfo(t, s.URI("alpha")), "alpha", 64<<20, "read-write", rw)
	check(nbdinfo(t, s.URI("beta")), "beta", 32<<20, "read-write", rw)

	// --list shows both volumes.
	listURI := "nbd+unix:///?socket=" + s.Socket
	list := nbdinfo(t, "--list", listURI)
	var got []string
	for _, e := range list.Exports {
		size, _ := e["export-size"].(float64)
		got = append(got, fmt.Sprintf("%v:%d", e["export-name"], int64(size)))
	}
	if want := fmt.Sprintf("alpha:%d,beta:%d", 64<<20, 32<<20); strings.Join(got, ",") != want {
		t.Errorf("nbdinfo --list: %q, want %s", got, want)
	}
	// The plain-text listing names both exports too.
	text := mustRun(t, "nbdinfo", "--list", listURI)
	for _, name := range []string{`export="alpha"`, `export="beta"`} {
		if !strings.Contains(text, name) {
			t.Errorf("nbdinfo --list does not show %s:\n%s", name, text)
		}
	}
	// An unknown export cannot be opened.
	bogus := strings.Replace(s.URI("alpha"), "/alpha?", "/gamma?", 1)
	if r := run(t, "nbdinfo", bogus); r.code == 0 {
		t.Errorf("nbdinfo of an export that is not served succeeded:\n%s", r)
	}
	s.StopOK()

	// The same volumes read-only.
	r := startServe(t, "--read-only", alpha, beta)
	check(nbdinfo(t, r.URI("alpha")), "alpha", 64<<20, "read-only", ro)
	check(nbdinfo(t, r.URI("beta")), "beta", 32<<20, "read-only", ro)
	list = nbdinfo(t, "--list", "nbd+unix:///?socket="+r.Socket)
	if len(list.Exports) != 2 {
		t.Errorf("read-only serve lists %d exports, want 2", len(list.Exports))
	}
	r.StopOK()
}
