package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// openSlab opens (creating if needed) the slab file in dir and makes it
// exactly size bytes. fresh reports that the file's previous contents cannot
// be trusted to match any index: it was just created or had another size (in
// which case it is emptied first so no old bytes survive the resize).
func openSlab(dir string, size int64) (f *os.File, fresh bool, err error) {
	path := filepath.Join(dir, slabFileName)
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open slab: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("stat slab %s: %w", path, err)
	}
	if fi.Size() == size {
		return f, false, nil
	}
	if fi.Size() != 0 {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("truncate slab %s: %w", path, err)
		}
	}
	if err := preallocate(f, size); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("preallocate slab %s to %d bytes: %w", path, size, err)
	}
	return f, true, nil
}

// preallocate reserves size bytes for f with fallocate(2), so a full disk is
// discovered at Open rather than at some Put. On filesystems without
// fallocate it falls back to a sparse ftruncate.
func preallocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Fallocate(int(fd), 0, 0, size)
			if ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return f.Truncate(size)
	}
	return ferr
}
