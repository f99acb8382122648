// Package export serves a set of attached volumes over one NBD server,
// each read-write volume with its control socket, and stops them all in
// the one order that loses nothing: drain the NBD clients (their in-flight
// requests are answered), then close the control sockets and flush and
// close the volumes. `urldisk serve` and the agent's machines both run
// their exports through it, so both stop, time out and report fencing
// the same way.
package export

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/periodic"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volume"
)

// Defaults for Config fields left zero.
const (
	// DefaultDrainTimeout bounds how long Shutdown waits for NBD clients
	// to finish the requests they sent; after it their connections are
	// cut (the requests' writes stay buffered and are still flushed).
	DefaultDrainTimeout = 10 * time.Second
	// DefaultCloseTimeout bounds the final flush and close of the volumes
	// and their control sockets, after the drain.
	DefaultCloseTimeout = time.Minute
	// DefaultFencePoll is how often the export checks its volumes for
	// fencing that no client request revealed (a background upload found
	// another writer's fence).
	DefaultFencePoll = time.Second
)

// Volume is one volume to export.
type Volume struct {
	// Name is the export name; unique within a Config.
	Name string
	// Open attaches the volume. Start calls the Opens in order, after
	// checking the Config, and owns what they return: Shutdown closes it,
	// and so does Start itself if a later step fails.
	Open func(ctx context.Context) (*volume.Volume, error)
	// Label starts the description NBD clients are shown, which goes on
	// with the size and the mode: "Label (10 GiB, read-write)". Default
	// "urldisk NAME".
	Label string
	// Device, if set, returns what is exported in place of the attached
	// volume (the agent wraps it to count requests); it must pass the
	// volume's errors through, blockdev.ErrFenced above all.
	Device func(*volume.Volume) blockdev.Device
}

// Config is what Start serves and how.
type Config struct {
	// Volumes to attach and export, at least one.
	Volumes []Volume
	// Listener is where NBD clients connect. The caller opens it, so that
	// a bad or busy address fails before any volume is attached (a
	// read-write attach fences the previous writer); Start takes it over:
	// it is closed by Shutdown, or before Start returns an error.
	Listener net.Listener
	// NBD configures the server (TLS, allow-list, connection limits).
	// Start sets Exports and OnFenced; a nil Logger becomes Logger.
	NBD nbd.Options
	// ControlOptional makes a control socket that cannot start a warning
	// (the volume is served without one, so checkpoints on this host are
	// taken offline) instead of an error from Start.
	ControlOptional bool
	// DrainTimeout: see DefaultDrainTimeout.
	DrainTimeout time.Duration
	// CloseTimeout: see DefaultCloseTimeout.
	CloseTimeout time.Duration
	// FencePoll: see DefaultFencePoll.
	FencePoll time.Duration
	// Logger receives events; nil discards them.
	Logger *slog.Logger
}

// served is one attached volume.
type served struct {
	name string
	v    *volume.Volume
	ctl  *control.Server // nil: read-only, or ControlOptional and it failed
}

// Export is a running export. Its methods are safe for concurrent use.
type Export struct {
	cfg  Config
	log  *slog.Logger
	vols []served
	srv  *nbd.Server

	cancel    context.CancelFunc // ends Serve and the fence watcher
	serveErr  error              // Serve's result; read after done is closed
	done      chan struct{}      // closed when Serve returned
	allFenced chan struct{}      // closed when every read-write volume is fenced
	watchDone chan struct{}      // closed when the fence watcher returned

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start checks cfg, attaches the volumes, starts a control socket for each
// read-write one and serves them all on cfg.Listener until Shutdown. On
// error everything it did is undone, and the listener is closed.
func Start(ctx context.Context, cfg Config) (_ *Export, err error) {
	cfg = withDefaults(cfg)
	if cfg.Listener == nil {
		return nil, errors.New("start export: no listener")
	}
	defer func() {
		if err != nil {
			cfg.Listener.Close()
		}
	}()
	if err := checkVolumes(cfg.Volumes); err != nil {
		return nil, fmt.Errorf("start export: %w", err)
	}
	e := &Export{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), allFenced: make(chan struct{}), watchDone: make(chan struct{})}
	defer func() {
		if err != nil {
			if cerr := e.closeVolumes(context.WithoutCancel(ctx)); cerr != nil {
				e.log.Warn("detaching after a failed start", "err", cerr)
			}
		}
	}()
	exports := make(map[string]nbd.Export, len(cfg.Volumes))
	for _, vc := range cfg.Volumes {
		ex, err := e.attach(ctx, vc)
		if err != nil {
			return nil, err
		}
		exports[vc.Name] = ex
	}
	kick := make(chan struct{}, 1)
	opts := cfg.NBD
	opts.Exports = exports
	opts.OnFenced = func(string) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if e.srv, err = nbd.NewServer(opts); err != nil {
		return nil, fmt.Errorf("start export: %w", err)
	}
	// Serve and the watcher do not end with ctx: the export lives until
	// Shutdown, however long the call that started it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	go func() {
		e.serveErr = e.srv.Serve(sctx, cfg.Listener)
		close(e.done)
	}()
	go e.watchFenced(sctx, kick)
	return e, nil
}

func withDefaults(cfg Config) Config {
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if cfg.FencePoll <= 0 {
		cfg.FencePoll = DefaultFencePoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NBD.Logger == nil {
		cfg.NBD.Logger = cfg.Logger
	}
	return cfg
}

// checkVolumes refuses a Config that cannot be served, before anything is
// attached.
func checkVolumes(vols []Volume) error {
	if len(vols) == 0 {
		return errors.New("no volumes to export")
	}
	names := make(map[string]bool, len(vols))
	for i, vc := range vols {
		switch {
		case vc.Name == "":
			return fmt.Errorf("volume %d has no export name", i)
		case vc.Open == nil:
			return fmt.Errorf("volume %q has no Open", vc.Name)
		case names[vc.Name]:
			return fmt.Errorf("two volumes named %q; export names must be unique", vc.Name)
		}
		names[vc.Name] = true
	}
	return nil
}

// attach opens one volume and its control socket and records them in e
// (so that a failure later is undone by closeVolumes).
func (e *Export) attach(ctx context.Context, vc Volume) (nbd.Export, error) {
	v, err := vc.Open(ctx)
	if err != nil {
		return nbd.Export{}, err
	}
	e.vols = append(e.vols, served{name: vc.Name, v: v})
	s := &e.vols[len(e.vols)-1]
	mode := "read-only"
	if !v.ReadOnly() {
		mode = "read-write"
		ctl, err := control.Start(v, e.log)
		switch {
		case err != nil && e.cfg.ControlOptional:
			e.log.Warn("no control socket for this volume: checkpoints on this host will be taken offline", "export", vc.Name, "err", err)
		case err != nil:
			return nbd.Export{}, fmt.Errorf("export %s: %w", vc.Name, err)
		default:
			s.ctl = ctl
		}
	}
	label := vc.Label
	if label == "" {
		label = "urldisk " + vc.Name
	}
	var dev blockdev.Device = v
	if vc.Device != nil {
		dev = vc.Device(v)
	}
	return nbd.Export{Device: dev, Description: fmt.Sprintf("%s (%s, %s)", label, units.FormatSize(uint64(v.Size())), mode)}, nil
}

// URI is the NBD URI clients use for export name.
func (e *Export) URI(name string) (string, error) {
	return nbd.URI(e.cfg.Listener.Addr(), name, e.cfg.NBD.TLSConfig != nil)
}

// Names returns the export names in the order of Config.Volumes.
func (e *Export) Names() []string {
	names := make([]string, len(e.vols))
	for i, s := range e.vols {
		names[i] = s.name
	}
	return names
}

// Volume returns the attached volume exported as name, nil if none.
func (e *Export) Volume(name string) *volume.Volume {
	for _, s := range e.vols {
		if s.name == name {
			return s.v
		}
	}
	return nil
}

// Fenced is closed once every read-write volume of the export is fenced
// (another writer took it over: its unflushed writes are lost), whether a
// client request or a background upload found out. Never closed for an
// export without read-write volumes. Fenced exports are refused to new
// NBD clients as soon as they are found.
func (e *Export) Fenced() <-chan struct{} { return e.allFenced }

// Done is closed if the NBD server stops serving by itself (its listener
// failed); Shutdown returns why. Shutdown must still be called.
func (e *Export) Done() <-chan struct{} { return e.done }

// watchFenced closes allFenced once every read-write volume is fenced. It
// checks when the NBD server reports a fenced export (kick) and every
// FencePoll, since a volume also learns of a takeover from a background
// upload; exports found fenced that way are marked on the server so that
// new clients are refused them.
func (e *Export) watchFenced(ctx context.Context, kick <-chan struct{}) {
	defer close(e.watchDone)
	var rw []served
	for _, s := range e.vols {
		if !s.v.ReadOnly() {
			rw = append(rw, s)
		}
	}
	if len(rw) == 0 {
		return
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	periodic.Run(ctx, e.cfg.FencePoll, kick, func() {
		n := 0
		for _, s := range rw {
			if s.v.Fenced() {
				e.srv.MarkFenced(s.name)
				n++
			}
		}
		if n == len(rw) {
			close(e.allFenced)
			stop() // Run calls this no more
		}
	})
}

// Shutdown stops the export: it stops accepting clients, lets connected
// ones finish the requests they sent (at most DrainTimeout, then cuts
// them), closes the control sockets, and flushes and closes every volume
// (at most CloseTimeout), all also bounded by ctx. It returns every error
// joined: a fenced volume's close wraps blockdev.ErrFenced. Later calls
// return the first call's result.
func (e *Export) Shutdown(ctx context.Context) error {
	e.shutdownOnce.Do(func() { e.shutdownErr = e.shutdown(ctx) })
	return e.shutdownErr
}

func (e *Export) shutdown(ctx context.Context) error {
	var errs []error
	dctx, cancel := context.WithTimeout(ctx, e.cfg.DrainTimeout)
	if err := e.srv.Shutdown(dctx); err != nil {
		errs = append(errs, fmt.Errorf("drain nbd clients: %w", err))
	}
	cancel()
	// Serve may not have seen the closed listener yet; cancelling its
	// context makes it return now (with context.Canceled, not news).
	e.cancel()
	<-e.done
	<-e.watchDone
	if err := e.serveErr; err != nil && !errors.Is(err, nbd.ErrServerClosed) && !errors.Is(err, context.Canceled) {
		errs = append(errs, fmt.Errorf("serve nbd: %w", err))
	}
	if err := e.closeVolumes(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// closeVolumes closes every control socket and volume attached so far,
// within CloseTimeout of now.
func (e *Export) closeVolumes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.CloseTimeout)
	defer cancel()
	var errs []error
	for _, s := range e.vols {
		if s.ctl != nil {
			if err := s.ctl.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close control socket of %s: %w", s.name, err))
			}
		}
		if err := s.v.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close volume %s: %w", s.name, err))
		}
	}
	return errors.Join(errs...)
}
