package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"

	"github.com/spf13/cobra"

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
		if err := refuseNestedPool(ctx, poolURL); err != nil {
			store.Close()
			return nil, err
		}
		p, err = volume.InitPool(ctx, store, opts)
		if err == nil {
			log.Info("initialised pool", "pool", objstore.Redact(poolURL))
		}
	}
	if errors.Is(err, volume.ErrNoPool) {
		err = fmt.Errorf("%s: %w: pool not found or not initialised (create it with `urldisk pool init %s`)", objstore.Redact(poolURL), err, objstore.Redact(poolURL))
	}
	if err != nil {
		store.Close()
		return nil, err
	}
	return p, nil
}

// maxPoolNesting bounds how many enclosing prefixes refuseNestedPool checks
// (one marker read each).
const maxPoolNesting = 32

// refuseNestedPool fails if poolURL lies inside an initialised pool. Volume
// names are one path segment, so `create POOL/a/b` would otherwise
// initialise a new pool POOL/a inside POOL's namespace and create b there,
// which is never what was meant. Only called before initialising a pool, so
// the extra reads cost nothing on the common path.
func refuseNestedPool(ctx context.Context, poolURL string) error {
	cur, rel := poolURL, ""
	for range maxPoolNesting {
		parent, seg, err := objstore.SplitVolumeURL(cur)
		if err != nil {
			return nil // no parent prefix left (or not a name-like segment)
		}
		rel = path.Join(seg, rel)
		store, err := objstore.Open(ctx, parent)
		if err != nil {
			return nil
		}
		_, err = volume.OpenPool(ctx, store, volume.PoolOptions{})
		store.Close()
		if err == nil {
			return fmt.Errorf("%w: %s lies inside the pool %s, and pools do not nest (volume names are a single path segment: use <pool>/NAME, not <pool>/%s/NAME)",
				objstore.ErrBadURL, objstore.Redact(poolURL), objstore.Redact(parent), rel)
		}
		cur = parent
	}
	return nil
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

// withPool opens the pool at rawURL for the duration of fn.
func withPool(cmd *cobra.Command, g *globals, rawURL string, fn func(ctx context.Context, p *volume.Pool) error) error {
	ctx := cmd.Context()
	p, err := openPool(ctx, g.log, rawURL, false)
	if err != nil {
		return err
	}
	defer p.Store().Close()
	return fn(ctx, p)
}

// withVolume opens the pool of volume URL rawURL for the duration of fn.
func withVolume(cmd *cobra.Command, g *globals, rawURL string, fn func(ctx context.Context, p *volume.Pool, name string) error) error {
	ctx := cmd.Context()
	p, name, err := openVolumeURL(ctx, g.log, rawURL, false)
	if err != nil {
		return err
	}
	defer p.Store().Close()
	return fn(ctx, p, name)
}

// withWriter attaches volume name read-write for fn, then closes it
// (flushing); the first error wins.
func withWriter(ctx context.Context, g *globals, p *volume.Pool, name string, fn func(v *volume.Volume) error) error {
	v, err := p.Open(ctx, name, volume.Options{Logger: g.log})
	if err != nil {
		return err
	}
	err = fn(v)
	if cerr := v.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// writeJSON prints v as indented JSON on the command's output.
func writeJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
