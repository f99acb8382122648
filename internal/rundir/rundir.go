// Package rundir creates and checks the private directories urldisk keeps
// its unix sockets in ($TMPDIR/urldisk-UID, the agent's state directory).
//
// A directory under a shared /tmp can be created first by another local
// user: if we then put a socket in it, that user can swap the socket for
// its own and serve its own disk to our qemu. So a directory is used only
// if it is a real directory (not a symlink), owned by us, and gives group
// and others nothing beyond what the caller allows (search, for the
// agent's directories that run-as workloads traverse).
package rundir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Base is the current user's urldisk runtime directory:
// $XDG_RUNTIME_DIR/urldisk, or $TMPDIR/urldisk-UID without it. Pass it to
// Ensure before putting anything in it.
func Base() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "urldisk")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("urldisk-%d", os.Getuid()))
}

// ErrUnsafe is wrapped by every error about a directory that exists but
// must not be used.
var ErrUnsafe = errors.New("unsafe runtime directory")

// Private is the mode of a directory only its owner may use.
const Private fs.FileMode = 0o700

// Traverse is the mode of a directory whose entries others may reach by
// name (each entry protects itself) but not list.
const Traverse fs.FileMode = 0o711

// Ensure makes each of dirs (outermost first, each inside the previous)
// exist as a directory owned by the current user with at most perm's
// group and other bits, creating missing ones with mode perm. The first
// may have missing parents (they are created 0700); the others are
// created only once their parent is known to be ours, so nobody can slip
// a directory of theirs in between.
func Ensure(perm fs.FileMode, dirs ...string) error {
	for i, dir := range dirs {
		if i == 0 {
			if err := os.MkdirAll(filepath.Dir(dir), Private); err != nil {
				return fmt.Errorf("create runtime directory: %w", err)
			}
		}
		if err := ensureOne(dir, perm); err != nil {
			return err
		}
	}
	return nil
}

func ensureOne(dir string, perm fs.FileMode) error {
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create runtime directory: %w", err)
	}
	if err := Check(dir, perm); err != nil {
		return err
	}
	// Mkdir's mode is cut by the umask, and an existing directory of ours
	// may be narrower than perm (0700 where Traverse's search bits are
	// meant): set it exactly. Check made sure it is ours.
	if err := os.Chmod(dir, perm); err != nil {
		return fmt.Errorf("set mode of runtime directory: %w", err)
	}
	return nil
}

// Check returns an error wrapping ErrUnsafe unless dir is a directory (not
// a symlink) owned by the current user whose group and other bits are
// within perm's. The error names the path, its owner and mode, and the fix.
func Check(dir string, perm fs.FileMode) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check runtime directory: %w", err)
	}
	uid := os.Getuid()
	owner := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = int(st.Uid)
	}
	mode := fi.Mode()
	switch {
	case mode&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: %s is a symlink (owner uid %d): remove it, or set $XDG_RUNTIME_DIR / choose another directory", ErrUnsafe, dir, owner)
	case !mode.IsDir():
		return fmt.Errorf("%w: %s is not a directory (%v, owner uid %d): remove it or choose another directory", ErrUnsafe, dir, mode, owner)
	case owner != uid:
		return fmt.Errorf("%w: %s is owned by uid %d, not by us (uid %d), mode %04o: another user may control what is in it; remove it (as root or its owner) or set $XDG_RUNTIME_DIR / choose another directory",
			ErrUnsafe, dir, owner, uid, mode.Perm())
	case mode.Perm()&0o077&^perm != 0:
		return fmt.Errorf("%w: %s (owner uid %d) has mode %04o: group and others must have no access beyond %04o; run chmod %04o %s",
			ErrUnsafe, dir, owner, mode.Perm(), perm&0o077, perm, dir)
	}
	return nil
}

// Chown makes dir belong to uid:gid, for a workload running as another
// user that must reach (only) its own sockets. It refuses a dir that is
// not the directory Ensure made (a symlink, say), since lchown on the
// wrong thing would hand it over.
func Chown(dir string, uid, gid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("chown runtime directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafe, dir)
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("chown runtime directory: %w", err)
	}
	return nil
}
