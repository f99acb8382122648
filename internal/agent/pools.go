package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

// pools keeps one open Pool per pool URL. Safe for concurrent use.
type pools struct {
	log  *slog.Logger
	keys volume.KeySource

	mu sync.Mutex
	m  map[string]*volume.Pool // pool URL → pool; guarded by mu
}

func newPools(log *slog.Logger, keys volume.KeySource) *pools {
	return &pools{log: log, keys: keys, m: map[string]*volume.Pool{}}
}

// open returns the pool of a volume URL and the volume's name.
func (ps *pools) open(ctx context.Context, volumeURL string) (*volume.Pool, string, error) {
	ref, err := volref.ParseHead(volumeURL)
	if err != nil {
		return nil, "", err
	}
	ps.mu.Lock()
	p, ok := ps.m[ref.Pool]
	ps.mu.Unlock()
	if ok {
		return p, ref.Name, nil
	}
	p, err = volume.OpenPoolURL(ctx, ref.Pool, volume.PoolOptions{Logger: ps.log, Key: ps.keys})
	if err != nil {
		return nil, "", err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if q, ok := ps.m[ref.Pool]; ok { // lost a race to open it
		p.Close()
		return q, ref.Name, nil
	}
	ps.m[ref.Pool] = p
	return p, ref.Name, nil
}

// close closes every pool (and so its store).
func (ps *pools) close() error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var errs []error
	for u, p := range ps.m {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close pool %s: %w", objstore.Redact(u), err))
		}
		delete(ps.m, u)
	}
	return errors.Join(errs...)
}

// ResolveVolume returns the id of the volume volumeURL names, failing
// unless it exists in an initialised pool. It is what
// fleet.Ops.ResolveVolume wants: every spelling of one volume gives one id.
func ResolveVolume(ctx context.Context, volumeURL string) (string, error) {
	ref, err := volref.ParseHead(volumeURL)
	if err != nil {
		return "", err
	}
	p, err := volume.OpenPoolURL(ctx, ref.Pool, volume.PoolOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return "", err
	}
	defer p.Close()
	d, err := p.Resolve(ctx, ref.Name)
	if err != nil {
		return "", err
	}
	return d.ID, nil
}
