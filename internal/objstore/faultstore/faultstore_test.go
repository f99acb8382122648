package faultstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/objstore/objstoretest"
)

func newMem(t *testing.T) objstore.Store {
	s, err := objstore.Open(t.Context(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// With hooks that inject nothing, the wrapper is a conforming Store.
func TestContractPassThrough(t *testing.T) {
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return faultstore.New(newMem(t), faultstore.Hooks{
			Before: func(faultstore.Op, string) error { return nil },
			After:  func(faultstore.Op, string, error) error { return nil },
		})
	})
}

func TestBeforeFailsWithoutEffect(t *testing.T) {
	inner := newMem(t)
	s := faultstore.New(inner, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if op == faultstore.OpPut && key == "bad" {
			return faultstore.ErrInjected
		}
		return nil
	}})
	ctx := t.Context()
	if err := s.Put(ctx, "bad", []byte("x")); !errors.Is(err, faultstore.ErrInjected) {
		t.Fatalf("Put: err = %v, want ErrInjected", err)
	}
	if _, err := inner.Get(ctx, "bad"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("failed-before Put reached the store: %v", err)
	}
	if err := s.Put(ctx, "good", []byte("x")); err != nil {
		t.Fatalf("Put of another key: %v", err)
	}
}

func TestAfterLosesResponse(t *testing.T) {
	inner := newMem(t)
	var (
		mu  sync.Mutex
		ops []faultstore.Op
	)
	s := faultstore.New(inner, faultstore.Hooks{After: func(op faultstore.Op, key string, err error) error {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, op)
		if op == faultstore.OpPutIfAbsent || op == faultstore.OpGet {
			return faultstore.ErrInjected
		}
		return nil
	}})
	ctx := t.Context()
	// The create happens, but its caller hears of a failure.
	if err := s.PutIfAbsent(ctx, "log/1", []byte("mine")); !errors.Is(err, faultstore.ErrInjected) {
		t.Fatalf("PutIfAbsent: err = %v, want ErrInjected", err)
	}
	if got, err := inner.Get(ctx, "log/1"); err != nil || string(got) != "mine" {
		t.Fatalf("lost-response PutIfAbsent did not happen: %q, %v", got, err)
	}
	// A retry then finds the key taken.
	if err := inner.PutIfAbsent(ctx, "log/1", []byte("mine")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("retry: err = %v, want ErrExists", err)
	}
	if got, err := s.Get(ctx, "log/1"); got != nil || !errors.Is(err, faultstore.ErrInjected) {
		t.Fatalf("Get with lost response = %q, %v; want nil data and ErrInjected", got, err)
	}
	// Operations' own errors pass through when the hook returns nil.
	if _, err := s.Stat(ctx, "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat missing: err = %v, want ErrNotFound", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []faultstore.Op{faultstore.OpPutIfAbsent, faultstore.OpGet, faultstore.OpStat}
	if len(ops) != len(want) {
		t.Fatalf("After saw %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("After saw %v, want %v", ops, want)
		}
	}
}

// BeforeCtx and AfterCtx see the request's context: a hook that blocks on it
// stalls the request until the caller's deadline, like an unresponsive store.
func TestCtxHooksStallUntilDeadline(t *testing.T) {
	inner := newMem(t)
	stall := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	s := faultstore.New(inner, faultstore.Hooks{
		BeforeCtx: func(ctx context.Context, op faultstore.Op, key string) error {
			if key == "before" {
				return stall(ctx)
			}
			return nil
		},
		AfterCtx: func(ctx context.Context, op faultstore.Op, key string, err error) error {
			if key == "after" {
				return stall(ctx)
			}
			return nil
		},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := s.PutIfAbsent(ctx, "before", []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled-before PutIfAbsent: err = %v, want DeadlineExceeded", err)
	}
	if _, err := inner.Get(t.Context(), "before"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("stalled-before PutIfAbsent reached the store: %v", err)
	}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	if err := s.PutIfAbsent(ctx2, "after", []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled-after PutIfAbsent: err = %v, want DeadlineExceeded", err)
	}
	if got, err := inner.Get(t.Context(), "after"); err != nil || string(got) != "x" {
		t.Fatalf("stalled-after PutIfAbsent did not happen: %q, %v", got, err)
	}
}

// NoConditionalCreate makes the store one that objstore.Probe rejects: a
// second PutIfAbsent of a key overwrites it.
func TestNoConditionalCreate(t *testing.T) {
	s := faultstore.New(newMem(t), faultstore.Hooks{NoConditionalCreate: true})
	if ok, err := objstore.Probe(t.Context(), s); err != nil || ok {
		t.Fatalf("Probe = %v, %v; want false, nil", ok, err)
	}
	if err := s.PutIfAbsent(t.Context(), "k", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(t.Context(), "k", []byte("b")); err != nil {
		t.Fatalf("second PutIfAbsent: %v, want an overwrite", err)
	}
	if got, err := s.Get(t.Context(), "k"); err != nil || string(got) != "b" {
		t.Fatalf("Get = %q, %v; want the overwrite", got, err)
	}
}
