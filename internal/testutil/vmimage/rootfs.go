package vmimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RootFSSize is the size of the image BuildRootFS makes.
const RootFSSize = 64 << 20

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot(t testing.TB) string {
	t.Helper()
	need(t, "go", "golang (or a Go toolchain on PATH)")
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("vmimage: go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatalf("vmimage: not inside a Go module (go env GOMOD = %q)", mod)
	}
	return filepath.Dir(mod)
}

// GoBuild builds the package pkg (a path relative to the module root, like
// ./cmd/urldisk) into out with the extra environment env, e.g.
// CGO_ENABLED=0. It fails t on error.
func GoBuild(t testing.TB, pkg, out string, env ...string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vmimage: go build %s: %v\n%s", pkg, err, b)
	}
}

// BuildGuestInit builds ./guestinit as a static linux/amd64 binary in a
// temporary directory of t and returns its path.
func BuildGuestInit(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guestinit")
	GoBuild(t, "./internal/testutil/vmimage/guestinit", out,
		"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	return out
}

// BuildRootFS makes dir/rootfs.img, a RootFSSize ext4 image (4 KiB blocks,
// fully initialised so the guest kernel starts no background zeroing)
// holding the executable init at /init and /sbin/init, and empty /data,
// /dev, /proc and /sys. It is populated by mkfs.ext4 -d, without mounting.
// Pass BuildGuestInit's result as init for the counter guest.
func BuildRootFS(t testing.TB, dir, init string) string {
	t.Helper()
	mkfs := need(t, "mkfs.ext4", "e2fsprogs")
	bin, err := os.ReadFile(init)
	if err != nil {
		t.Fatalf("vmimage: init: %v", err)
	}
	tree := filepath.Join(dir, "rootfs.tree")
	for _, d := range []string{"sbin", "data", "dev", "proc", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
	}
	for _, p := range []string{"init", "sbin/init"} {
		if err := os.WriteFile(filepath.Join(tree, p), bin, 0o755); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
	}
	img := filepath.Join(dir, "rootfs.img")
	f, err := os.OpenFile(img, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("vmimage: %v", err)
	}
	err = f.Truncate(RootFSSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("vmimage: %v", err)
	}
	cmd := exec.Command(mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "urldisk-root",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", "-d", tree, img)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vmimage: %s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	if err := os.RemoveAll(tree); err != nil {
		t.Fatalf("vmimage: %v", err)
	}
	return img
}
