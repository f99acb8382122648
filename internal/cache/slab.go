package cache

import (
	"fmt"
	"os"
	"path/filepath"
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

// preallocate sizes the slab sparsely: disk space is used only as chunks
// are cached, so a generous --cache-size costs nothing up front. A full disk
// later only makes Put fail, which callers treat as "not cached".
func preallocate(f *os.File, size int64) error {
	return f.Truncate(size)
}
