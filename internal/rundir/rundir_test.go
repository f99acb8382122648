package rundir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/testutil/otheruser"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// Regression: $TMPDIR/urldisk-UID was used even when another user had
// created it 0777, letting that user swap our sockets for theirs.
func TestEnsureRefusesAnotherUsersDirectory(t *testing.T) {
	other := otheruser.Get(t)
	shared := otheruser.SharedDir(t)
	t.Setenv("TMPDIR", shared)
	t.Setenv("XDG_RUNTIME_DIR", "")
	base := Base()
	if want := filepath.Join(shared, fmt.Sprintf("urldisk-%d", os.Getuid())); base != want {
		t.Fatalf("Base() = %s, want %s", base, want)
	}
	other.Run(t, "mkdir", "-m", "0777", base)
	err := Ensure(Private, base, filepath.Join(base, "ctl"))
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("Ensure on another user's 0777 directory: %v, want ErrUnsafe", err)
	}
	for _, want := range []string{base, fmt.Sprintf("owned by uid %d", other.UID), "0777", "remove it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(base, "ctl")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Ensure created ctl inside the refused directory: %v", err)
	}
}

func TestEnsureRefusesLooseModeAndSymlink(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	if err := os.Mkdir(loose, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o770); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(Private, loose); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "chmod 0700 "+loose) {
		t.Errorf("0770 directory: %v, want ErrUnsafe saying chmod 0700", err)
	}
	// Traverse allows search (x) for others but not read or write.
	if err := os.Chmod(loose, 0o751); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(Traverse, loose); !errors.Is(err, ErrUnsafe) {
		t.Errorf("0751 directory with Traverse: %v, want ErrUnsafe", err)
	}
	link := filepath.Join(dir, "link")
	target := filepath.Join(dir, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(Private, link); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("symlink: %v, want ErrUnsafe naming the symlink", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(Private, file); !errors.Is(err, ErrUnsafe) {
		t.Errorf("plain file: %v, want ErrUnsafe", err)
	}
}

func TestEnsureCreatesExactModes(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "x", "a") // missing parent too
	b := filepath.Join(a, "b")
	if err := Ensure(Traverse, a, b); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, a); m != 0o711 {
		t.Errorf("%s mode %04o, want 0711", a, m)
	}
	if m := mode(t, b); m != 0o711 {
		t.Errorf("%s mode %04o, want 0711", b, m)
	}
	// An existing private directory of ours becomes traversable on demand.
	c := filepath.Join(dir, "c")
	if err := Ensure(Private, c); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, c); m != 0o700 {
		t.Errorf("%s mode %04o, want 0700", c, m)
	}
	if err := Ensure(Traverse, c); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, c); m != 0o711 {
		t.Errorf("%s mode %04o after Ensure(Traverse), want 0711", c, m)
	}
}
