// Package faultstore wraps an objstore.Store with fault-injection hooks, for
// tests of the packages above objstore: fail an operation before it reaches
// the store, or let it happen and lose its response.
package faultstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/urldisk/urldisk/internal/objstore"
)

// Op names a Store method.
type Op string

// The operations a hook sees.
const (
	OpGet         Op = "get"
	OpGetRange    Op = "get-range"
	OpPut         Op = "put"
	OpPutIfAbsent Op = "put-if-absent"
	OpDelete      Op = "delete"
	OpStat        Op = "stat"
	OpList        Op = "list" // key is the list prefix
)

// ErrInjected is a ready-made error for hooks to return; tests can tell
// injected failures from real ones with errors.Is.
var ErrInjected = errors.New("injected fault")

// Hooks are called around every operation. Either may be nil. Hooks run on
// the caller's goroutine and must be safe for concurrent use.
type Hooks struct {
	// Before is called before the operation. A non-nil error is returned to
	// the caller and the operation does not happen.
	Before func(op Op, key string) error
	// After is called once the operation has happened, with its own error
	// (nil on success). A non-nil return value replaces the result: the
	// caller gets that error and no data, as if the response was lost
	// (a PutIfAbsent that created the object but reports failure). A nil
	// return keeps the operation's own result.
	After func(op Op, key string, err error) error
	// BeforeCtx and AfterCtx are Before and After given the request's
	// context, so that a hook can stall a request the way an unresponsive
	// store does: block until the caller's deadline (or a release) and
	// return ctx.Err(). They run after Before and before After.
	BeforeCtx func(ctx context.Context, op Op, key string) error
	AfterCtx  func(ctx context.Context, op Op, key string, err error) error
	// NoConditionalCreate makes PutIfAbsent a plain Put that overwrites,
	// like an S3 gateway that drops If-None-Match: the store urldisk must
	// refuse to write through. Hooks still see OpPutIfAbsent.
	NoConditionalCreate bool
}

// Store is an objstore.Store with hooks. Create it with New.
type Store struct {
	inner objstore.Store
	hooks Hooks // immutable after New
}

var _ objstore.Store = (*Store)(nil)

// New wraps inner. Close closes inner.
func New(inner objstore.Store, hooks Hooks) *Store {
	return &Store{inner: inner, hooks: hooks}
}

func (s *Store) before(ctx context.Context, op Op, key string) error {
	if s.hooks.Before != nil {
		if err := s.hooks.Before(op, key); err != nil {
			return fmt.Errorf("%s %s: %w", op, key, err)
		}
	}
	if s.hooks.BeforeCtx != nil {
		if err := s.hooks.BeforeCtx(ctx, op, key); err != nil {
			return fmt.Errorf("%s %s: %w", op, key, err)
		}
	}
	return nil
}

// after returns true and the hook's replacement for err, or false and err.
func (s *Store) after(ctx context.Context, op Op, key string, err error) (lost bool, _ error) {
	if s.hooks.AfterCtx != nil {
		if herr := s.hooks.AfterCtx(ctx, op, key, err); herr != nil {
			return true, fmt.Errorf("%s %s (response lost): %w", op, key, herr)
		}
	}
	if s.hooks.After != nil {
		if herr := s.hooks.After(op, key, err); herr != nil {
			return true, fmt.Errorf("%s %s (response lost): %w", op, key, herr)
		}
	}
	return false, err
}

// afterErr is after for operations that return only an error.
func (s *Store) afterErr(ctx context.Context, op Op, key string, err error) error {
	_, err = s.after(ctx, op, key, err)
	return err
}

// Get implements objstore.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := s.before(ctx, OpGet, key); err != nil {
		return nil, err
	}
	data, err := s.inner.Get(ctx, key)
	if lost, aerr := s.after(ctx, OpGet, key, err); lost {
		return nil, aerr
	}
	return data, err
}

// GetIfChanged implements objstore.ConditionalGetter through the inner
// store's (objstore.GetIfChanged); hooks see it as OpGet.
func (s *Store) GetIfChanged(ctx context.Context, key, etag string) ([]byte, string, error) {
	if err := s.before(ctx, OpGet, key); err != nil {
		return nil, "", err
	}
	data, tag, err := objstore.GetIfChanged(ctx, s.inner, key, etag)
	if lost, aerr := s.after(ctx, OpGet, key, err); lost {
		return nil, "", aerr
	}
	return data, tag, err
}

// GetRange implements objstore.Store.
func (s *Store) GetRange(ctx context.Context, key string, off int64, p []byte) (int, error) {
	if err := s.before(ctx, OpGetRange, key); err != nil {
		return 0, err
	}
	n, err := s.inner.GetRange(ctx, key, off, p)
	if lost, aerr := s.after(ctx, OpGetRange, key, err); lost {
		return 0, aerr
	}
	return n, err
}

// Put implements objstore.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	if err := s.before(ctx, OpPut, key); err != nil {
		return err
	}
	return s.afterErr(ctx, OpPut, key, s.inner.Put(ctx, key, data))
}

// PutIfAbsent implements objstore.Store.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := s.before(ctx, OpPutIfAbsent, key); err != nil {
		return err
	}
	if s.hooks.NoConditionalCreate {
		return s.afterErr(ctx, OpPutIfAbsent, key, s.inner.Put(ctx, key, data))
	}
	return s.afterErr(ctx, OpPutIfAbsent, key, s.inner.PutIfAbsent(ctx, key, data))
}

// Delete implements objstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.before(ctx, OpDelete, key); err != nil {
		return err
	}
	return s.afterErr(ctx, OpDelete, key, s.inner.Delete(ctx, key))
}

// Stat implements objstore.Store.
func (s *Store) Stat(ctx context.Context, key string) (objstore.ObjectInfo, error) {
	if err := s.before(ctx, OpStat, key); err != nil {
		return objstore.ObjectInfo{}, err
	}
	info, err := s.inner.Stat(ctx, key)
	if lost, aerr := s.after(ctx, OpStat, key, err); lost {
		return objstore.ObjectInfo{}, aerr
	}
	return info, err
}

// List implements objstore.Store. The After hook runs once the listing is
// complete; the callback has by then seen every object.
func (s *Store) List(ctx context.Context, prefix string, fn func(objstore.ObjectInfo) error) error {
	if err := s.before(ctx, OpList, prefix); err != nil {
		return err
	}
	return s.afterErr(ctx, OpList, prefix, s.inner.List(ctx, prefix, fn))
}

// Describe implements objstore.Describer: the wrapped store's description.
func (s *Store) Describe(ctx context.Context) string {
	d := objstore.Describe(ctx, s.inner)
	if s.hooks.NoConditionalCreate {
		d += " (conditional create disabled by faultstore)"
	}
	return d
}

// Close implements objstore.Store; it closes the wrapped store without hooks.
func (s *Store) Close() error {
	return s.inner.Close()
}
