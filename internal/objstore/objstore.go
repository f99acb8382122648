// Package objstore is the object-store layer under urldisk: a small Store
// interface with one adapter over gocloud.dev/blob (mem://, s3://) and a
// small file:// backend of its own with an atomic create-if-absent (link(2)).
//
// Open (or Opener.Open, which shares mem:// buckets) turns a pool root URL
// into a Store; CanonicalURL gives every spelling of a store URL one form;
// Redact makes any URL safe to log. Volume URLs (<pool>/<name>) are
// volref's, not this package's. Probe tells whether a store's
// PutIfAbsent is really conditional: callers must refuse read-write use of a
// pool where it is not.
//
// Caller duties: keys must satisfy ValidateKey; a PutIfAbsent error (even
// ErrExists, after an SDK retry of a lost response) may hide a successful
// create, so writers re-read the object to learn who owns it. Errors are
// wrapped with the operation and key; match them with errors.Is against
// ErrNotFound, ErrExists, ErrBadURL and ErrBadKey, never by text.
//
// The contract every backend meets is tested by objstoretest.RunContractTests;
// faultstore wraps a Store with injected failures and lost responses.
package objstore

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Adapters translate backend errors into these; callers use
// errors.Is, never string matching.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrExists: PutIfAbsent found the key already taken.
	ErrExists = errors.New("object already exists")
	// ErrBadURL: the URL could not be parsed or names an unknown scheme/option.
	ErrBadURL = errors.New("bad object store URL")
)

// Lister is implemented by stores that can start a listing after a key
// (S3 StartAfter); callers fall back to List and skip.
type Lister interface {
	// ListAfter is List restricted to keys greater than after.
	ListAfter(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error
}

// ListAfter lists keys under prefix greater than after, efficiently where
// the store supports it.
func ListAfter(ctx context.Context, s Store, prefix, after string, fn func(ObjectInfo) error) error {
	if l, ok := s.(Lister); ok {
		return l.ListAfter(ctx, prefix, after, fn)
	}
	return s.List(ctx, prefix, func(oi ObjectInfo) error {
		if oi.Key <= after {
			return nil
		}
		return fn(oi)
	})
}

// ProgressGetter is implemented by stores whose GetRange receives the bytes
// over time (over the network): GetRangeProgress is GetRange, also calling
// progress(n) each time the first n bytes of p have arrived, so a caller
// can check them while they are still in the CPU's cache rather than read
// the whole range back from memory afterwards.
type ProgressGetter interface {
	GetRangeProgress(ctx context.Context, key string, off int64, p []byte, progress func(n int)) (int, error)
}

// ObjectInfo describes one object as returned by List and Stat.
type ObjectInfo struct {
	Key     string // relative to the store's root prefix
	Size    int64
	ModTime time.Time
}

// Store is a flat key space of immutable objects rooted at a prefix.
// All methods are safe for concurrent use. Keys are '/'-separated relative
// paths without a leading slash.
type Store interface {
	// Get returns the whole object. ErrNotFound if missing.
	Get(ctx context.Context, key string) ([]byte, error)
	// GetRange reads into p the bytes of key starting at off. It returns the
	// number of bytes read; n < len(p) (with a nil error) only when the object
	// ends before off+len(p). ErrNotFound if missing. p is owned by the caller.
	GetRange(ctx context.Context, key string, off int64, p []byte) (int, error)
	// Put writes (or overwrites) an object atomically: readers see the old or
	// the new whole object, never a part.
	Put(ctx context.Context, key string, data []byte) error
	// PutIfAbsent creates key only if it does not exist, atomically with
	// respect to every other creator (S3 If-None-Match: *, link(2) for files).
	// ErrExists if the key is taken. A lost response may surface as an error
	// even though the object was created: callers must re-read to find out.
	PutIfAbsent(ctx context.Context, key string, data []byte) error
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Stat returns the object's size and modification time. ErrNotFound if missing.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix, in
	// lexicographic key order. If fn returns an error, List stops and returns it.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Close releases the store's resources.
	Close() error
}
