package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/agent/runtime"
	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volume"
)

// instance is one run of a machine on this host: its attached volume, the
// NBD export of it, and the workload.
type instance struct {
	name    string
	spec    fleet.Spec
	version uint64 // placement version it runs for; the runner may bump it
	vol     *volume.Volume
	dev     *device
	trace   *tracer
	srv     *nbd.Server
	uri     string
	m       runtime.Machine
	started time.Time
	// ctl lets `urldisk checkpoint/restore/compact` on this host act through
	// us instead of attaching a second writer; nil if it could not start.
	ctl *control.Server

	serveDone chan error         // Serve's result
	cancel    context.CancelFunc // ends Serve (hard) and prefetch
	wg        sync.WaitGroup     // Serve and prefetch goroutines
}

// ended reports whether the workload exited or the volume was fenced.
func (in *instance) ended() bool {
	select {
	case <-in.m.Done():
		return true
	case <-in.dev.Fenced():
		return true
	default:
		return false
	}
}

// startInstance attaches p's volume read-write (fencing any previous
// writer), exports it on a unix socket, starts prefetching from the
// machine's access trace, and starts the workload. On error everything it
// did is undone.
func (a *Agent) startInstance(ctx context.Context, p *fleet.Placement, prevStop time.Time, log *slog.Logger) (_ *instance, err error) {
	if err := runtime.Check(p.Spec); err != nil {
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	ra, err := resolveRunAs(p.Spec.RunAs)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	sockDir, dir := a.machineSockDir(p.Name), filepath.Join(a.cfg.StateDir, "machines", p.Name)
	if err := machineDirs(ra, sockDir, dir); err != nil {
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	pool, volName, err := a.pools.open(ctx, p.Spec.Volume)
	if err != nil {
		return nil, fmt.Errorf("machine %s: open pool: %w", p.Name, err)
	}
	attachStart := time.Now()
	v, err := pool.Open(ctx, volName, volume.Options{Cache: a.volumeCache(), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("machine %s: attach %s: %w", p.Name, objstore.Redact(p.Spec.Volume), err)
	}
	log.Info("volume attached", "volume", objstore.Redact(p.Spec.Volume), "epoch", v.Epoch(), "took", time.Since(attachStart).Round(time.Millisecond))
	ictx, cancel := context.WithCancel(context.Background())
	in := &instance{name: p.Name, spec: p.Spec, version: p.Version, vol: v, cancel: cancel, serveDone: make(chan error, 1)}
	defer func() {
		if err != nil {
			cancel()
			in.wg.Wait()
			dctx, dcancel := context.WithTimeout(context.Background(), a.cfg.DetachTimeout)
			if cerr := v.Close(dctx); cerr != nil {
				log.Warn("detaching after a failed start", "err", cerr)
			}
			dcancel()
		}
	}()
	if ctl, cerr := control.Start(v, log); cerr != nil {
		log.Warn("no control socket for this volume: checkpoints on this host will be taken offline", "err", cerr)
	} else {
		in.ctl = ctl
		defer func() {
			if err != nil {
				ctl.Close(context.Background())
			}
		}()
	}
	if a.cfg.TracePages > 0 {
		in.trace = newTracer(tracePageSize, a.cfg.TracePages)
	}
	in.dev = newDevice(v, a.metrics.forMachine(p.Name), in.trace, func(t time.Time) {
		if !prevStop.IsZero() {
			d := t.Sub(prevStop)
			a.metrics.downtime.Observe(d.Seconds())
			log.Info("first request served after the move", "downtime", d.Round(time.Millisecond))
		}
		kick(a.kickHeartbeat)
	})
	srv, err := nbd.NewServer(nbd.Options{
		Exports: map[string]nbd.Export{volName: {Device: in.dev, Description: fmt.Sprintf("urldisk machine %s (%s)", p.Name, units.FormatSize(uint64(v.Size())))}},
		Logger:  log,
	})
	if err != nil {
		return nil, err
	}
	in.srv = srv
	ln, err := nbd.Listen("unix:" + filepath.Join(sockDir, nbdSocketName))
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	if err := shareSocket(filepath.Join(sockDir, nbdSocketName), ra); err != nil {
		ln.Close()
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	if in.uri, err = nbd.URI(ln.Addr(), volName, false); err != nil {
		ln.Close()
		return nil, err
	}
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		in.serveDone <- srv.Serve(ictx, ln)
	}()
	if in.trace != nil {
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			a.prefetch(ictx, p, v, log)
		}()
	}
	in.m, err = runtime.Start(p.Spec, runtime.Config{
		Name: p.Name, Host: a.cfg.ID, NBDURI: in.uri,
		Dir: dir, SocketDir: sockDir, Cred: ra.cred, Home: ra.home, Logger: log,
	})
	if err != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		scancel()
		return nil, err
	}
	in.started = a.cfg.Now()
	return in, nil
}

// stopInstance stops the workload (graceful, then killed), drains the
// export, saves the access trace and detaches the volume with a final
// flush. It returns the flush's error (blockdev.ErrFenced if another host
// took the volume over).
func (a *Agent) stopInstance(in *instance, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopGrace+a.cfg.DetachTimeout)
	defer cancel()
	if err := in.m.Stop(ctx, a.cfg.StopGrace); err != nil {
		log.Warn("stopping the workload", "err", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	if err := in.srv.Shutdown(sctx); err != nil {
		log.Warn("draining the NBD export", "err", err)
	}
	scancel()
	in.cancel()
	in.wg.Wait()
	if err := <-in.serveDone; err != nil && !errors.Is(err, nbd.ErrServerClosed) && !errors.Is(err, context.Canceled) {
		log.Warn("NBD export ended with an error", "err", err)
	}
	if pages := in.trace.snapshot(); len(pages) > 0 && !in.vol.Fenced() {
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.fleet.PutTrace(tctx, &fleet.Trace{Name: in.name, Volume: in.spec.Volume, Host: a.cfg.ID, Time: a.cfg.Now().UTC(), PageSize: tracePageSize, Pages: pages})
		tcancel()
		if err != nil {
			log.Warn("could not save the access trace", "err", err)
		}
	}
	dctx, dcancel := context.WithTimeout(ctx, a.cfg.DetachTimeout)
	defer dcancel()
	if in.ctl != nil {
		in.ctl.Close(dctx)
	}
	return in.vol.Close(dctx)
}

// prefetchWorkers bounds concurrent prefetch reads.
const prefetchWorkers = 4

// prefetch warms the host cache with the pages the machine used recently
// on its previous host (most recent first), through the volume's normal
// read path (so every page is verified and cached).
func (a *Agent) prefetch(ctx context.Context, p *fleet.Placement, v *volume.Volume, log *slog.Logger) {
	tr, err := a.fleet.GetTrace(ctx, p.Name)
	if err != nil || tr == nil {
		if err != nil && ctx.Err() == nil {
			log.Warn("could not read the access trace", "err", err)
		}
		return
	}
	if tr.Volume != p.Spec.Volume || tr.PageSize != tracePageSize || tr.Host == a.cfg.ID {
		return // another volume, another layout, or our own cache is already warm
	}
	start := time.Now()
	pages := make(chan uint64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for range prefetchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, tracePageSize)
			for pg := range pages {
				off := int64(pg) * tracePageSize
				if off >= v.Size() {
					continue
				}
				b := buf[:min(int64(len(buf)), v.Size()-off)]
				if err := v.ReadAt(ctx, b, off); err != nil {
					continue // fenced, closed, cancelled: the feeder stops on ctx
				}
				a.metrics.prefetched.Inc()
				mu.Lock()
				n++
				mu.Unlock()
			}
		}()
	}
feed:
	for i := len(tr.Pages) - 1; i >= 0; i-- {
		select {
		case pages <- tr.Pages[i]:
		case <-ctx.Done():
			break feed
		}
	}
	close(pages)
	wg.Wait()
	log.Info("prefetched the previous host's working set", "pages", n, "of", len(tr.Pages), "from", tr.Host, "took", time.Since(start).Round(time.Millisecond))
}

// volumeCache is the host cache as volumes take it: a nil interface when
// the agent runs without one (a nil *cache.Cache in the interface would be
// called).
func (a *Agent) volumeCache() volume.Cache {
	if a.cache == nil {
		return nil
	}
	return a.cache
}
