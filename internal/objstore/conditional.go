package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrNotModified: GetIfChanged found the object still at the ETag the
// caller holds; nothing was returned.
var ErrNotModified = errors.New("object not modified")

// ConditionalGetter is implemented by stores that can skip downloading an
// object that did not change (HTTP If-None-Match, answered 304).
type ConditionalGetter interface {
	// GetIfChanged returns the whole object and its ETag, or
	// ErrNotModified if the object's ETag is still etag ("" always
	// returns the object). ErrNotFound if missing. ETags are opaque: only
	// compare them for equality, and only from one store.
	GetIfChanged(ctx context.Context, key, etag string) ([]byte, string, error)
}

// GetIfChanged is s's GetIfChanged where s has one; otherwise it gets the
// whole object and uses a hash of its content as the ETag (which saves the
// caller decoding an unchanged object, not the transfer).
func GetIfChanged(ctx context.Context, s Store, key, etag string) ([]byte, string, error) {
	if c, ok := s.(ConditionalGetter); ok {
		return c.GetIfChanged(ctx, key, etag)
	}
	data, err := s.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return unchanged(key, data, contentETag(data), etag)
}

// contentETag is the ETag GetIfChanged gives stores without their own.
func contentETag(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// unchanged returns data and its ETag got, or ErrNotModified if got is
// the etag the caller holds: for stores (or servers) that answered a
// conditional request with the whole object anyway.
func unchanged(key string, data []byte, got, etag string) ([]byte, string, error) {
	if etag != "" && got == etag {
		return nil, "", fmt.Errorf("get %s: %w", key, ErrNotModified)
	}
	return data, got, nil
}
