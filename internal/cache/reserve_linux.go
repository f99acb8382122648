package cache

import (
	"os"

	"golang.org/x/sys/unix"
)

// allocate gives f disk blocks for [off, off+n) without changing its size
// or contents (fallocate mode 0 over a sparse file: unwritten extents).
func allocate(f *os.File, off, n int64) error {
	return onFD(f, func(fd int) error { return unix.Fallocate(fd, 0, off, n) })
}
