package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// openPool opens the pool at poolURL; with create it initialises an empty
// store as a pool first.
func openPool(ctx context.Context, log *slog.Logger, poolURL string, create bool) (*volume.Pool, error) {
	store, err := objstore.Open(ctx, poolURL)
	if err != nil {
		return nil, err
	}
	opts := volume.PoolOptions{Logger: log}
	p, err := volume.OpenPool(ctx, store, opts)
	if errors.Is(err, volume.ErrNoPool) && create {
		p, err = volume.InitPool(ctx, store, opts)
		if err == nil {
			log.Info("initialised pool", "pool", objstore.Redact(poolURL))
		}
	}
	if errors.Is(err, volume.ErrNoPool) {
		err = fmt.Errorf("%s: %w (create it with `urldisk pool init %s`)", objstore.Redact(poolURL), err, objstore.Redact(poolURL))
	}
	if err != nil {
		store.Close()
		return nil, err
	}
	return p, nil
}

// splitVolumeURLIfURL splits s if it looks like a URL (has "://"); a bare
// name returns ("", "", nil).
func splitVolumeURLIfURL(s string) (string, string, error) {
	if !strings.Contains(s, "://") {
		return "", "", nil
	}
	return objstore.SplitVolumeURL(s)
}

// openVolumeURL splits a volume URL and opens its pool.
func openVolumeURL(ctx context.Context, log *slog.Logger, rawURL string, create bool) (*volume.Pool, string, error) {
	poolURL, name, err := objstore.SplitVolumeURL(rawURL)
	if err != nil {
		return nil, "", err
	}
	p, err := openPool(ctx, log, poolURL, create)
	if err != nil {
		return nil, "", err
	}
	return p, name, nil
}
