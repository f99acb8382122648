package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// pools keeps one open Pool per pool URL. Safe for concurrent use.
type pools struct {
	log *slog.Logger

	mu sync.Mutex
	m  map[string]*volume.Pool // pool URL → pool; guarded by mu
}

func newPools(log *slog.Logger) *pools { return &pools{log: log, m: map[string]*volume.Pool{}} }

// open returns the pool of a volume URL and the volume's name.
func (ps *pools) open(ctx context.Context, volumeURL string) (*volume.Pool, string, error) {
	poolURL, name, err := objstore.SplitVolumeURL(volumeURL)
	if err != nil {
		return nil, "", err
	}
	ps.mu.Lock()
	p, ok := ps.m[poolURL]
	ps.mu.Unlock()
	if ok {
		return p, name, nil
	}
	p, err = OpenPool(ctx, poolURL, ps.log)
	if err != nil {
		return nil, "", err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if q, ok := ps.m[poolURL]; ok { // lost a race to open it
		p.Store().Close()
		return q, name, nil
	}
	ps.m[poolURL] = p
	return p, name, nil
}

// close closes every pool's store.
func (ps *pools) close() error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var errs []error
	for u, p := range ps.m {
		if err := p.Store().Close(); err != nil {
			errs = append(errs, fmt.Errorf("close pool %s: %w", objstore.Redact(u), err))
		}
		delete(ps.m, u)
	}
	return errors.Join(errs...)
}

// OpenPool opens the pool at poolURL (which must be initialised).
func OpenPool(ctx context.Context, poolURL string, log *slog.Logger) (*volume.Pool, error) {
	store, err := objstore.Open(ctx, poolURL)
	if err != nil {
		return nil, err
	}
	p, err := volume.OpenPool(ctx, store, volume.PoolOptions{Logger: log})
	if err != nil {
		store.Close()
		if errors.Is(err, volume.ErrNoPool) {
			return nil, fmt.Errorf("%s: %w (create it with `urldisk pool init`)", objstore.Redact(poolURL), err)
		}
		return nil, err
	}
	return p, nil
}

// CheckVolume fails unless volumeURL names an existing volume in an
// initialised pool. It is what fleet.Ops.CheckVolume wants.
func CheckVolume(ctx context.Context, volumeURL string) error {
	poolURL, name, err := objstore.SplitVolumeURL(volumeURL)
	if err != nil {
		return err
	}
	p, err := OpenPool(ctx, poolURL, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer p.Store().Close()
	_, err = p.Resolve(ctx, name)
	return err
}
