package objstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
)

// fileStore is the file:// backend: one regular file per object under root,
// key "a/b" at root/a/b. It is our own small implementation over os rather
// than gocloud's fileblob, because fileblob (v0.49) implements IfNotExist as
// a stat followed by a rename under a process-local mutex, and does not
// fsync. Run through the multi-process race of TestFilePutIfAbsentMultiProcess
// (5 processes × 8 goroutines, 30 keys), fileblob let 5 to 15 of the 30 keys
// be "created" by several processes at once (up to one winner per process),
// each winner told it had the key: fencing on top of that would be unsound.
//
// Durability and atomicity:
//   - Put writes a temporary file in the object's directory, fsyncs it,
//     renames it over the key and fsyncs the directory.
//   - PutIfAbsent writes and fsyncs a temporary file the same way, then
//     link(2)s it to the key, which fails with EEXIST atomically across
//     processes, removes the temporary name and fsyncs the directory.
//   - Directories are created on demand, each new one fsynced into its
//     parent; the root too, by the first Put (opening does not create it).
//     Delete does not remove emptied directories.
//
// Temporary files are named ".urldisk-tmp.*"; List never returns them and
// ValidateKey refuses keys that could collide with them. A temporary file
// left behind by a crash is never listed but is not cleaned up either.
//
// Objects are created with mode 0600 and directories with 0700: disk
// contents are private to the serving user.
//
// Unlike S3, a key cannot be both an object and a "directory" of other keys
// ("a" and "a/b"): the second Put fails.
type fileStore struct {
	root   string // absolute and clean
	closed atomic.Bool
}

var _ Store = (*fileStore)(nil)

// openFileStore does not create dir: a missing directory is an empty store
// (as an unused S3 prefix is), created by the first Put. So read-only uses
// (`ls`, `info` of a mistyped pool) leave no directory behind and report
// "no pool" instead.
func openFileStore(dir string) (*fileStore, error) {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open file://%s: %w", dir, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("open file://%s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: syscall.ENOTDIR})
	}
	return &fileStore{root: dir}, nil
}

// isNotFound reports a path error that means "no such object": a missing
// file, a path through a regular file, or a directory where a file was meant.
func isNotFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR)
}

// begin checks the store, the context and the key, and returns the key's path.
func (s *fileStore) begin(ctx context.Context, op, key string) (string, error) {
	if s.closed.Load() {
		return "", fmt.Errorf("%s %s: store is closed", op, key)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s %s: %w", op, key, err)
	}
	if err := ValidateKey(key); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

func (s *fileStore) Get(ctx context.Context, key string) ([]byte, error) {
	p, err := s.begin(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if isNotFound(err) {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return data, nil
}

func (s *fileStore) GetRange(ctx context.Context, key string, off int64, buf []byte) (int, error) {
	p, err := s.begin(ctx, "get range", key)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("get range %s: negative offset %d", key, off)
	}
	f, err := os.Open(p)
	if isNotFound(err) {
		return 0, fmt.Errorf("get range %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("get range %s: %w", key, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("get range %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("get range %s: %w", key, ErrNotFound)
	}
	// ReadAt reads until len(buf) or the end of the file, where it says io.EOF.
	n, err := f.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("get range %s [%d, +%d): %w", key, off, len(buf), err)
	}
	return n, nil
}

// writeTemp writes data to a new fsynced temporary file in dir, creating dir
// if needed, and returns its path.
func writeTemp(dir string, data []byte) (string, error) {
	if err := mkdirAllSync(dir); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func (s *fileStore) Put(ctx context.Context, key string, data []byte) error {
	return s.publish(ctx, "put", key, data, func(tmp, p string) error {
		err := os.Rename(tmp, p)
		if err != nil {
			_ = os.Remove(tmp)
		}
		return err
	})
}

func (s *fileStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return s.publish(ctx, "put if absent", key, data, func(tmp, p string) error {
		// link(2) is the atomic create-if-absent: the name appears with the
		// complete, fsynced content, or the call fails with EEXIST.
		err := os.Link(tmp, p)
		// A temporary name that cannot be removed is harmless: List hides it.
		_ = os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			return ErrExists
		}
		return err
	})
}

// publish writes data to a fsynced temporary file beside key's path, gives
// it key's name with place (tmp, path), then fsyncs the directory: readers
// see the whole object or none of it. op names the call in errors.
func (s *fileStore) publish(ctx context.Context, op, key string, data []byte, place func(tmp, p string) error) error {
	p, err := s.begin(ctx, op, key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	tmp, err := writeTemp(dir, data)
	if err == nil {
		err = place(tmp, p)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, key, err)
	}
	return nil
}

func (s *fileStore) Delete(ctx context.Context, key string) error {
	p, err := s.begin(ctx, "delete", key)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	if isNotFound(err) || (err == nil && fi.IsDir()) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if err := os.Remove(p); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func (s *fileStore) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := s.begin(ctx, "stat", key)
	if err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if isNotFound(err) || (err == nil && !fi.Mode().IsRegular()) {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the tree depth first. Sorting each directory's entries by name,
// with "/" appended to directory names, yields keys in lexicographic order
// overall: every key under directory d starts with d+"/". Only one
// directory's entries are held at a time per level.
func (s *fileStore) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if s.closed.Load() {
		return fmt.Errorf("list %q: store is closed", prefix)
	}
	if err := validatePrefix(prefix); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	return s.walk(ctx, s.root, "", prefix, fn)
}

func (s *fileStore) walk(ctx context.Context, dir, rel, prefix string, fn func(ObjectInfo) error) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if isNotFound(err) && (rel != "" || errors.Is(err, fs.ErrNotExist)) {
			// Removed while we walked, or a root no Put has created yet.
			return nil
		}
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	type entry struct {
		sortKey string
		e       fs.DirEntry
	}
	sorted := make([]entry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			continue
		}
		switch {
		case e.IsDir():
			sorted = append(sorted, entry{name + "/", e})
		case e.Type().IsRegular():
			sorted = append(sorted, entry{name, e})
		}
	}
	slices.SortFunc(sorted, func(a, b entry) int { return cmp.Compare(a.sortKey, b.sortKey) })
	for _, ent := range sorted {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		key := rel + ent.sortKey
		if ent.e.IsDir() {
			if !strings.HasPrefix(key, prefix) && !strings.HasPrefix(prefix, key) {
				continue
			}
			if err := s.walk(ctx, filepath.Join(dir, ent.e.Name()), key, prefix, fn); err != nil {
				return err
			}
			continue
		}
		if !strings.HasPrefix(key, prefix) || ValidateKey(key) != nil {
			continue
		}
		fi, err := ent.e.Info()
		if isNotFound(err) {
			continue // deleted while we walked
		}
		if err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		if err := fn(ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

func (s *fileStore) Close() error {
	s.closed.Store(true)
	return nil
}

// mkdirAllSync creates dir and any missing parents with mode 0700, fsyncing
// each new directory's parent so the new entry is durable.
func mkdirAllSync(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllSync(parent); err != nil {
			return err
		}
	}
	// A concurrent creator may win (EEXIST); sync the parent anyway, since
	// we may go on to rely on the entry before the winner has synced it.
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// syncDir fsyncs a directory so that entries created, renamed or removed in
// it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
