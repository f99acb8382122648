package cache

import (
	"os"
	"syscall"
)

// allocate gives f disk blocks for [off, off+n) without changing its size
// or contents (fallocate mode 0 over a sparse file: unwritten extents).
func allocate(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Fallocate(int(fd), 0, off, n)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}
