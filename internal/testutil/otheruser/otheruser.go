// Package otheruser gives tests a second local user, to check what another
// user on the host can and cannot do to urldisk's directories, sockets and
// files. It needs root (CI runs as root): it creates the user with
// useradd if missing.
package otheruser

import (
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"testing"
)

// Name is the throwaway user's name.
const Name = "urldisk-test-other"

// User is the other user.
type User struct {
	Name     string
	UID, GID int
}

// Get returns the other user, creating it if needed. It fails t unless t
// runs as root.
func Get(t testing.TB) User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it creates and acts as a second local user); run it as root")
	}
	u, err := user.Lookup(Name)
	if err != nil {
		out, aerr := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", Name).CombinedOutput()
		// Another test binary may have created it meanwhile: look again.
		if u, err = user.Lookup(Name); err != nil {
			t.Fatalf("create test user %s: %v %s (lookup: %v)", Name, aerr, out, err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return User{Name: Name, UID: uid, GID: gid}
}

// Command returns cmd set to run as u, with no supplementary groups.
func (u User) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{}}}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/"}
	return cmd
}

// Run runs a command as u and fails t if it does not succeed.
func (u User) Run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := u.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("as %s: %s %v: %v\n%s", u.Name, name, args, err, out)
	}
}

// SharedDir returns a new directory that, like /tmp, every user may create
// entries in (mode 1777).
func SharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ud") // short: socket paths under it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}
