package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

// openPool opens the pool at poolURL; with create it initialises an empty
// store as a pool first. The pool owns its store: Close it.
func openPool(ctx context.Context, g *globals, poolURL string, create bool) (*volume.Pool, error) {
	log := g.log
	opts := volume.PoolOptions{Logger: log, Key: g.keySource()}
	p, err := volume.OpenPoolURL(ctx, poolURL, opts)
	if errors.Is(err, volume.ErrNoPool) && create {
		if err := refuseNestedPool(ctx, poolURL); err != nil {
			return nil, err
		}
		p, err = volume.InitPoolURL(ctx, poolURL, opts)
		if err == nil {
			log.Info("initialised pool", "pool", objstore.Redact(poolURL))
		}
	}
	return p, err
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
		ref, err := volref.ParseHead(cur)
		if err != nil {
			return nil // no parent prefix left (or not a name-like segment)
		}
		parent := ref.Pool
		rel = path.Join(ref.Name, rel)
		p, err := volume.OpenPoolURL(ctx, parent, volume.PoolOptions{Logger: slog.New(slog.DiscardHandler)})
		if err == nil {
			p.Close()
			return fmt.Errorf("%w: %s lies inside the pool %s, and pools do not nest (volume names are a single path segment: use <pool>/NAME, not <pool>/%s/NAME)",
				objstore.ErrBadURL, objstore.Redact(poolURL), objstore.Redact(parent), rel)
		}
		cur = parent
	}
	return nil
}

// parseRefIfURL parses s if it looks like a URL (has "://"); a bare name
// returns a zero Ref and false.
func parseRefIfURL(s string) (volref.Ref, bool, error) {
	if !strings.Contains(s, "://") {
		return volref.Ref{}, false, nil
	}
	r, err := volref.ParseHead(s)
	return r, err == nil, err
}

// openVolumeURL parses a volume URL (no point) and opens its pool.
func openVolumeURL(ctx context.Context, g *globals, rawURL string, create bool) (*volume.Pool, string, error) {
	ref, err := volref.ParseHead(rawURL)
	if err != nil {
		return nil, "", err
	}
	p, err := openPool(ctx, g, ref.Pool, create)
	if err != nil {
		return nil, "", err
	}
	return p, ref.Name, nil
}

// command builds a command that runs run with the command's context
// (cancelled on SIGINT/SIGTERM, see Main) and output. Every constructor
// shares this wiring, so each reads as its help text, arguments and work;
// Long and flags are set on the result.
func command(use, short string, args cobra.PositionalArgs, run func(ctx context.Context, out io.Writer, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd.Context(), cmd.OutOrStdout(), args)
		},
	}
}

// withPool opens the pool at rawURL for the duration of fn.
func withPool(ctx context.Context, g *globals, rawURL string, fn func(p *volume.Pool) error) error {
	p, err := openPool(ctx, g, rawURL, false)
	if err != nil {
		return err
	}
	defer p.Close()
	return fn(p)
}

// withVolume opens the pool of volume URL rawURL for the duration of fn.
func withVolume(ctx context.Context, g *globals, rawURL string, fn func(p *volume.Pool, name string) error) error {
	p, name, err := openVolumeURL(ctx, g, rawURL, false)
	if err != nil {
		return err
	}
	defer p.Close()
	return fn(p, name)
}

// withWriter attaches volume name read-write for fn, then closes it
// (flushing); the first error wins.
func withWriter(ctx context.Context, g *globals, p *volume.Pool, name string, fn func(v *volume.Volume) error) error {
	v, err := p.Open(ctx, name, volume.Options{Logger: oneShotLogger(g.log)})
	if err != nil {
		return err
	}
	err = fn(v)
	if cerr := v.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// oneShotLogger is log for a volume attached by a one-shot command
// (import, export, offline restore/compact): the volume's lifecycle INFO
// lines ("attached read-write", "restored") are noise there, since the
// command prints its own result, so they go out at DEBUG. Warnings and
// errors are unchanged.
func oneShotLogger(log *slog.Logger) *slog.Logger {
	return slog.New(demoteInfo{log.Handler()})
}

// demoteInfo is a slog.Handler that passes INFO records on as DEBUG.
type demoteInfo struct{ h slog.Handler }

func (d demoteInfo) Enabled(ctx context.Context, l slog.Level) bool {
	return d.h.Enabled(ctx, demote(l))
}

func (d demoteInfo) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return d.h.Handle(ctx, r)
}

func (d demoteInfo) WithAttrs(as []slog.Attr) slog.Handler { return demoteInfo{d.h.WithAttrs(as)} }
func (d demoteInfo) WithGroup(n string) slog.Handler       { return demoteInfo{d.h.WithGroup(n)} }

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

// writeJSON prints v as indented JSON on out.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
