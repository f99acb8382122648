package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/agent/workload"
	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/export"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
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
	// exp serves the volume on the machine's NBD socket, with its control
	// socket (so `urldisk checkpoint/restore/compact` on this host act
	// through us instead of attaching a second writer), and tells us when
	// another host fenced it.
	exp     *export.Export
	uri     string
	m       workload.Machine
	started time.Time

	cancel context.CancelFunc // ends prefetch
	wg     sync.WaitGroup     // the prefetch goroutine
}

// fenced is closed once the volume is found fenced (another host took it
// over), by a request or a background upload.
func (in *instance) fenced() <-chan struct{} { return in.exp.Fenced() }

// ended reports whether the workload exited or the volume was fenced.
func (in *instance) ended() bool {
	select {
	case <-in.m.Done():
		return true
	case <-in.fenced():
		return true
	default:
		return false
	}
}

// ErrVolumeReplaced means a machine's volume name is now bound to another
// volume than the one its placement recorded (removed and recreated under
// the same name): the agent refuses to attach it.
var ErrVolumeReplaced = errors.New("volume replaced")

// checkVolumeID fails with ErrVolumeReplaced unless the volume volName
// names in pool is the one p recorded. Placements written before ids were
// recorded have none and pass.
func checkVolumeID(ctx context.Context, pool *volume.Pool, volName string, p *fleet.Placement) error {
	if p.VolumeID == "" {
		return nil
	}
	d, err := pool.Resolve(ctx, volName)
	if err != nil {
		return err
	}
	if d.ID != p.VolumeID {
		return fmt.Errorf("%w: the machine was created on volume id %s, the name now binds volume id %s", ErrVolumeReplaced, p.VolumeID, d.ID)
	}
	return nil
}

// startInstance attaches p's volume read-write (fencing any previous
// writer), exports it on a unix socket, starts prefetching from the
// machine's access trace, and starts the workload. On error everything it
// did is undone.
func (a *Agent) startInstance(ctx context.Context, p *fleet.Placement, prevStop time.Time, log *slog.Logger) (_ *instance, err error) {
	if err := workload.Check(workloadSpec(p.Spec)); err != nil {
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
	// Listen before attaching: a socket that cannot be made fences no one.
	ln, err := nbd.Listen("unix:" + filepath.Join(sockDir, nbdSocketName))
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	if err := shareSocket(filepath.Join(sockDir, nbdSocketName), ra); err != nil {
		ln.Close()
		return nil, fmt.Errorf("machine %s: %w", p.Name, err)
	}
	in := &instance{name: p.Name, spec: p.Spec, version: p.Version}
	if a.cfg.TracePages > 0 {
		in.trace = newTracer(tracePageSize, a.cfg.TracePages)
	}
	attach := func(ctx context.Context) (*volume.Volume, error) {
		attachStart := time.Now()
		// Check the id before opening: opening read-write writes a fence
		// record, and fencing a volume that is not the machine's (its own
		// was removed and another created under the name) would both run
		// the machine on the wrong disk and take that disk from its user.
		if err := checkVolumeID(ctx, pool, volName, p); err != nil {
			return nil, fmt.Errorf("machine %s: attach %s: %w", p.Name, objstore.Redact(p.Spec.Volume), err)
		}
		v, err := pool.Open(ctx, volName, volume.Options{Cache: a.volumeCache(), Logger: log,
			StoreTimeout: a.cfg.StoreTimeout, FlushTimeout: a.cfg.FlushTimeout})
		if err != nil {
			return nil, fmt.Errorf("machine %s: attach %s: %w", p.Name, objstore.Redact(p.Spec.Volume), err)
		}
		log.Info("volume attached", "volume", objstore.Redact(p.Spec.Volume), "epoch", v.Epoch(), "took", time.Since(attachStart).Round(time.Millisecond))
		return v, nil
	}
	wrap := func(v *volume.Volume) blockdev.Device {
		in.dev = newDevice(v, a.metrics.forMachine(p.Name), in.trace, func(t time.Time) {
			if !prevStop.IsZero() {
				d := t.Sub(prevStop)
				a.metrics.downtime.Observe(d.Seconds())
				log.Info("first request served after the move", "downtime", d.Round(time.Millisecond))
			}
			kick(a.kickHeartbeat)
		})
		return in.dev
	}
	in.exp, err = export.Start(ctx, export.Config{
		Volumes:         []export.Volume{{Name: volName, Label: "urldisk machine " + p.Name, Open: attach, Device: wrap}},
		Listener:        ln,
		NBD:             nbd.Options{MaxConns: machineMaxConns, Budget: a.nbdBudget},
		ControlOptional: true, // checkpoints then go offline; the machine still runs
		CloseTimeout:    a.cfg.DetachTimeout,
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	in.vol = in.exp.Volume(volName)
	ictx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	defer func() {
		if err != nil {
			in.cancel()
			in.wg.Wait()
			if serr := in.exp.Shutdown(context.Background()); serr != nil {
				log.Warn("detaching after a failed start", "err", serr)
			}
		}
	}()
	if in.uri, err = in.exp.URI(volName); err != nil {
		return nil, err
	}
	if in.trace != nil {
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			a.prefetch(ictx, p, in.vol, log)
		}()
	}
	in.m, err = workload.Start(workloadSpec(p.Spec), workload.Config{
		Name: p.Name, Host: a.cfg.ID, NBDURI: in.uri,
		Dir: dir, SocketDir: sockDir, Cred: ra.cred, Home: ra.home, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	in.started = a.cfg.Now()
	return in, nil
}

// stopInstance stops the workload (graceful, then killed), stops the
// export (drains the NBD clients, closes the control socket, detaches the
// volume with a final flush) and saves the access trace. It returns the
// export's shutdown error (wrapping blockdev.ErrFenced if another host
// took the volume over).
func (a *Agent) stopInstance(in *instance, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopGrace+export.DefaultDrainTimeout+a.cfg.DetachTimeout)
	defer cancel()
	if err := in.m.Stop(ctx, a.cfg.StopGrace); err != nil {
		log.Warn("stopping the workload", "err", err)
	}
	in.cancel()
	in.wg.Wait()
	err := in.exp.Shutdown(ctx)
	if err != nil {
		log.Warn("stopping the export", "err", err)
	}
	if pages := in.trace.snapshot(); len(pages) > 0 && !in.vol.Fenced() {
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		terr := a.fleet.PutTrace(tctx, &fleet.Trace{Name: in.name, Volume: in.spec.Volume, Host: a.cfg.ID, Time: a.cfg.Now().UTC(), PageSize: tracePageSize, Pages: pages})
		tcancel()
		if terr != nil {
			log.Warn("could not save the access trace", "err", terr)
		}
	}
	return err
}

// machineMaxConns bounds the NBD connections a machine's workload may hold
// on its own socket: a VM or a process needs a few, and each is a file
// descriptor of the agent, which every other machine's export and uploads
// share (nbd.DefaultMaxConns is serve's bound for a whole process).
const machineMaxConns = 64

// prefetchParallel is the prefetch's GETs in flight. Its own lane in the
// volume: the machine's reads never wait for a prefetch slot.
const prefetchParallel = 16

// maxTraceRun bounds the trace pages one prefetch range covers (4 MiB), so
// a long run of the trace does not hold back the pages after it.
const maxTraceRun = 64

// Trace batches: traceRanges keeps the trace's order between batches of
// pages and sorts the pages within each, so that pages next to each other
// on the volume become one range (one GET of up to 1 MiB instead of many
// of 64 KiB). The batches grow from firstTraceBatch pages, doubling up to
// maxTraceBatch: the start of the trace (a boot: the kernel mounting the
// root and loading init, which waits for each read) keeps nearly its exact
// order, and the bulk of a large working set, which the machine will need
// in no particular order soon after, is fetched in large GETs.
const (
	firstTraceBatch = 16
	maxTraceBatch   = 2048
)

// traceRanges turns a trace's pages (first-touch order) into volume
// ranges to prefetch, in that order batch by batch (see firstTraceBatch).
func traceRanges(pages []uint64, pageSize int64) []volume.Range {
	var out []volume.Range
	batch := firstTraceBatch
	for len(pages) > 0 {
		n := min(batch, len(pages))
		b := slices.Clone(pages[:n])
		pages = pages[n:]
		batch = min(2*batch, maxTraceBatch)
		slices.Sort(b)
		b = slices.Compact(b)
		merged := len(out) // ranges of this batch start here
		for _, pg := range b {
			off := int64(pg) * pageSize
			if n := len(out); n > merged && out[n-1].End() == off && out[n-1].Len < maxTraceRun*pageSize {
				out[n-1].Len += pageSize
				continue
			}
			out = append(out, volume.Range{Off: off, Len: pageSize})
		}
	}
	return out
}

// prefetch warms the host cache with the pages the machine used on its
// previous host, in the order it first touched them there (the order it
// will need them in as it starts here), with several GETs in flight on a
// lane of their own so the machine's own reads never queue behind them.
// Everything goes through the volume's read path (verified, cached under
// the same keys), so it never changes what the machine reads.
func (a *Agent) prefetch(ctx context.Context, p *fleet.Placement, v *volume.Volume, log *slog.Logger) {
	if a.cache == nil {
		return // nowhere to keep the pages
	}
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
	st, err := v.Prefetch(ctx, traceRanges(tr.Pages, tr.PageSize), prefetchParallel)
	a.metrics.prefetched.Add(float64(st.Chunks + st.Cached))
	if err != nil && ctx.Err() == nil {
		log.Warn("prefetch of the previous host's working set stopped", "err", err)
	}
	log.Info("prefetched the previous host's working set", "trace_pages", len(tr.Pages), "from", tr.Host,
		"fetched_chunks", st.Chunks, "bytes", st.Bytes, "gets", st.GETs, "already_cached", st.Cached,
		"took", time.Since(start).Round(time.Millisecond))
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
