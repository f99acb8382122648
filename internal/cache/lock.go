package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dirLock is an exclusive flock(2) on the lock file of a cache directory. The
// kernel drops it when the process dies, so a crash never leaves it stale.
// The lock file is never deleted: unlinking a flocked file lets a second
// process lock a fresh inode under the same name.
type dirLock struct {
	f *os.File
}

// lockDir takes the exclusive lock on dir's lock file without blocking. If
// another process (or another Cache in this process) holds it, the error
// wraps ErrLocked and names the holder's pid when known.
func lockDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by %s", ErrLocked, path, lockHolder(path))
		}
		return nil, fmt.Errorf("flock %s: %w", path, err)
	}
	// Record our pid for the error message of the next would-be owner. Best
	// effort: the lock, not the content, is what excludes.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

// lockHolder describes the process whose pid the lock file at path
// records: "pid N (its command line)" when /proc still knows it, so whoever
// hits the lock can tell which of their processes to stop.
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	pid := strings.TrimSpace(string(b))
	if err != nil || pid == "" {
		return "an unknown process"
	}
	if _, err := strconv.Atoi(pid); err != nil {
		return "an unknown process"
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if args := strings.Fields(strings.ReplaceAll(string(cmdline), "\x00", " ")); err == nil && len(args) > 0 {
		const maxLen = 120 // a long command line would bury the message
		s := strings.Join(args, " ")
		if len(s) > maxLen {
			s = s[:maxLen] + "..."
		}
		return fmt.Sprintf("pid %s (%s)", pid, s)
	}
	return "pid " + pid
}

// release drops the lock and closes the lock file.
func (l *dirLock) release() error {
	err := flock(l.f, unix.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release cache lock: %w", err)
	}
	return nil
}

// flock applies how to f's descriptor.
func flock(f *os.File, how int) error {
	return onFD(f, func(fd int) error { return unix.Flock(fd, how) })
}

// onFD runs op on f's descriptor, again while it is interrupted (EINTR).
func onFD(f *os.File, op func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var operr error
	if err := rc.Control(func(fd uintptr) {
		for {
			operr = op(int(fd))
			if operr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return operr
}
