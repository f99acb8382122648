package objstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
)

// ProbePrefix is the key prefix under which Probe creates its short-lived
// probe objects.
const ProbePrefix = "urldisk-probe/"

// Probe reports whether s supports an atomic create-if-absent. It creates a
// fresh probe key with PutIfAbsent, tries to create it again with other
// content, and expects ErrExists and the first content to remain. It deletes
// the probe key before returning. A false result with a nil error means the
// store silently overwrote: it must not be used read-write. An error means
// the probe could not be carried out.
func Probe(ctx context.Context, s Store) (conditionalCreate bool, err error) {
	key := ProbePrefix + rand.Text()
	first, second := []byte("probe: first "+key), []byte("probe: second "+key)
	if err := s.PutIfAbsent(ctx, key, first); err != nil {
		return false, fmt.Errorf("probe: create %s: %w", key, err)
	}
	defer func() {
		if derr := s.Delete(ctx, key); derr != nil && err == nil {
			err = fmt.Errorf("probe: %w", derr)
		}
	}()
	err = s.PutIfAbsent(ctx, key, second)
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrExists):
		return false, fmt.Errorf("probe: create %s again: %w", key, err)
	}
	got, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("probe: read back: %w", err)
	}
	return bytes.Equal(got, first), nil
}
