package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/periodic"
	"github.com/urldisk/urldisk/internal/volume"
)

// Config configures an Agent. Zero durations pick the defaults.
type Config struct {
	// ID is this host's id in the fleet (required): 1-63 characters of
	// [a-zA-Z0-9._-].
	ID string
	// Fleet is the store holding fleet/ (required unless Coord is set).
	// The agent does not close it.
	Fleet objstore.Store
	// Coord, if set, is the coordination service used instead of a
	// fleet.Fleet over Fleet.
	Coord fleet.Coord
	// CacheDir is the host read cache (required), shared by every volume
	// the agent attaches; CacheSize bounds it in bytes (default 10 GiB).
	CacheDir  string
	CacheSize int64
	// StateDir holds machine logs (machines/<name>/) and sockets
	// (sock/<name>/). Default: $TMPDIR/urldisk-agent-<ID>. It must be ours
	// and private (0700; 0711 when the agent runs as root, so run-as
	// workloads reach their own directories): Run refuses one another user
	// created or can write.
	StateDir string
	// Listen is the API's listener: "tcp:HOST:PORT" or "unix:/path"
	// (required).
	Listen string
	// Key (optional) gives the key-encryption key of encrypted volumes.
	// It is asked once per pool, when the first encrypted volume of that
	// pool is attached; machines on encrypted volumes fail to start (naming
	// the volume's key fingerprint) without it, and unencrypted volumes never
	// need it.
	Key volume.KeySource
	// Token authenticates every API request (required, at least
	// MinTokenLen bytes): clients send "Authorization: Bearer <token>".
	Token string
	// TLSCert and TLSKey (PEM files), if set, serve the API over HTTPS
	// (TCP listeners only); the heartbeat then advertises https://.
	TLSCert, TLSKey string
	// TLSCA (PEM file), if set, is the only CA trusted when this agent
	// calls other agents' https:// APIs; default: the system's roots.
	TLSCA string
	// TLSClientCA (PEM file), if set, makes the API demand a client
	// certificate signed by it (mutual TLS) before any token is looked at.
	// TLSClientCert and TLSClientKey are the certificate this agent
	// presents when it calls other agents (give them when the fleet uses
	// mutual TLS).
	TLSClientCA, TLSClientCert, TLSClientKey string
	// Tokens are scoped API tokens accepted besides Token (which is
	// admin): see ParseTokens.
	Tokens []Token
	// MetricsListen, if set ("tcp:HOST:PORT" or "unix:/path"), serves
	// /metrics there without authentication, for a Prometheus that holds
	// no token; /metrics then leaves the API. Put it on loopback or a
	// trusted network: metrics name machines and hosts.
	MetricsListen string
	// HeartbeatTimeout: a host whose heartbeat did not change for this long
	// is dead and its machines fail over. Default 10s.
	HeartbeatTimeout time.Duration
	// HeartbeatInterval: how often the heartbeat is written. Default
	// HeartbeatTimeout/5.
	HeartbeatInterval time.Duration
	// ReconcileInterval: how often desired and running state are compared
	// without being told. Default HeartbeatInterval.
	ReconcileInterval time.Duration
	// StopGrace: how long a machine may take to stop gracefully before it
	// is killed. Default 30s.
	StopGrace time.Duration
	// StopWait: how long a machine's new host waits for the old host's
	// stop before attaching anyway (fencing keeps that safe). Default
	// HeartbeatTimeout + StopGrace.
	StopWait time.Duration
	// DetachTimeout bounds a volume's final flush. Default 1m.
	DetachTimeout time.Duration
	// StoreTimeout and FlushTimeout are the machines' volumes' bounds on
	// waits for a stalled object store (volume.Options.StoreTimeout,
	// FlushTimeout); zero takes the volume's defaults.
	StoreTimeout, FlushTimeout time.Duration
	// TracePages is how many recently used pages (64 KiB) of each machine
	// are recorded for prefetch on its next host. Default 4096 (256 MiB);
	// negative disables tracing and prefetch.
	TracePages int
	// NBDQueuedBytes bounds the NBD payload buffers held by the
	// connections of all machines together (nbd.Options.Budget). Default
	// nbd.DefaultMaxQueuedBytes (256 MiB).
	NBDQueuedBytes int64
	// Now tells the time; default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if err := fleet.ValidateName("host", c.ID); err != nil {
		return fmt.Errorf("agent: --id: %w", err)
	}
	switch {
	case c.Fleet == nil && c.Coord == nil:
		return errors.New("agent: no fleet store")
	case c.CacheDir == "":
		return errors.New("agent: no cache directory")
	case c.Listen == "":
		return errors.New("agent: no API listen address (tcp:HOST:PORT)")
	case c.Token == "":
		return errors.New("agent: no API token (--token-file or $URLDISK_TOKEN): the API refuses to run unauthenticated")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("agent: --tls-cert and --tls-key go together")
	case c.TLSCert != "" && !strings.HasPrefix(c.Listen, "tcp:"):
		return fmt.Errorf("agent: --tls-cert applies to a tcp: listener, not %q", c.Listen)
	}
	if err := checkToken(c.Token); err != nil {
		return err
	}
	if c.CacheSize <= 0 {
		c.CacheSize = 10 << 30
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join(os.TempDir(), "urldisk-agent-"+c.ID)
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 10 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.HeartbeatTimeout / 5
	}
	if c.HeartbeatInterval >= c.HeartbeatTimeout/2 {
		return fmt.Errorf("agent: heartbeat interval %v must be under half the timeout %v", c.HeartbeatInterval, c.HeartbeatTimeout)
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = c.HeartbeatInterval
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 30 * time.Second
	}
	if c.StopWait <= 0 {
		c.StopWait = c.HeartbeatTimeout + c.StopGrace
	}
	if c.DetachTimeout <= 0 {
		c.DetachTimeout = time.Minute
	}
	if c.NBDQueuedBytes < 0 {
		return fmt.Errorf("agent: NBD payload budget %d bytes: want 0 (the default) or more", c.NBDQueuedBytes)
	}
	if c.TracePages == 0 {
		c.TracePages = 4096
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// tracePageSize is the granularity of access traces: the cache's chunk.
const tracePageSize = cache.ChunkSize

// Agent is a host's daemon. Create it with New and run it with Run.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	fleet   fleet.Coord
	member  *fleet.Member
	ops     *fleet.Ops
	metrics *metrics
	pools   *pools
	sockDir string
	tls     *tls.Config  // the API's; nil: plain HTTP
	peers   *http.Client // calls other agents' APIs (nudges)
	started time.Time

	// Set by Run before any goroutine starts; read-only afterwards.
	cache  *cache.Cache
	apiURL string

	kickReconcile chan struct{} // cap 1
	kickHeartbeat chan struct{} // cap 1
	fencedCount   atomic.Uint64
	seq           atomic.Uint64 // heartbeats written
	// nbdBudget bounds the NBD payload buffers of all machines together:
	// each machine's export has a server of its own, and clients that send
	// reads and never read the replies would otherwise hold the bound once
	// per machine.
	nbdBudget *nbd.Budget

	mu      sync.Mutex
	runners map[string]*runner // guarded by mu
	// runCtx is the runners' context; runWG counts them. Set by Run.
	runCtx context.Context
	runWG  sync.WaitGroup
}

// New validates cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:           cfg,
		log:           cfg.Logger.With("agent", cfg.ID),
		sockDir:       filepath.Join(cfg.StateDir, "sock"),
		started:       cfg.Now().UTC(),
		kickReconcile: make(chan struct{}, 1),
		kickHeartbeat: make(chan struct{}, 1),
		runners:       map[string]*runner{},
		nbdBudget:     nbd.NewBudget(cmp.Or(cfg.NBDQueuedBytes, nbd.DefaultMaxQueuedBytes)),
	}
	a.fleet = cfg.Coord
	if a.fleet == nil {
		// Membership is re-read every timeout: a new host is watched
		// within about one timeout of its first heartbeat.
		a.fleet = fleet.NewWithOptions(cfg.Fleet, fleet.Options{Logger: a.log, Now: cfg.Now, MembershipEvery: cfg.HeartbeatTimeout})
	}
	a.member = fleet.NewMember(a.fleet, fleet.MemberConfig{Self: cfg.ID, By: "agent " + cfg.ID, Timeout: cfg.HeartbeatTimeout, Now: cfg.Now, Logger: a.log})
	a.ops = &fleet.Ops{Fleet: a.fleet, By: "agent " + cfg.ID, Now: cfg.Now, ResolveVolume: ResolveVolume, DefaultTimeout: cfg.HeartbeatTimeout}
	a.pools = newPools(a.log, a.cfg.Key)
	var err error
	if a.tls, err = cfg.serverTLS(); err != nil {
		return nil, err
	}
	if a.peers, err = NewHTTPClient(cfg.TLSCA, cfg.TLSClientCert, cfg.TLSClientKey); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// The longest socket path must fit sun_path (108 bytes).
	if p := filepath.Join(a.machineSockDir(strings.Repeat("x", 63)), nbdSocketName); len(p) > 107 {
		return nil, fmt.Errorf("agent: state directory %s is too long for unix socket paths (%d > 107 bytes); choose a shorter --state-dir", cfg.StateDir, len(p))
	}
	return a, nil
}

// Run runs the agent until ctx ends: it opens the cache, serves the API,
// heartbeats and reconciles. On the way out it stops every machine
// (gracefully, flushing its volume), writes a last heartbeat marked down
// (so other agents take its machines over at once), and returns. ready, if
// non-nil, is called with the API's base URL once it listens.
func (a *Agent) Run(ctx context.Context, ready func(apiURL string)) error {
	if err := a.stateDirs(); err != nil {
		return err
	}
	c, err := cache.Open(a.cfg.CacheDir, a.cfg.CacheSize, cache.Options{Logger: a.log})
	switch {
	case errors.Is(err, cache.ErrLocked):
		return fmt.Errorf("agent: %w (another urldisk process uses %s: give each agent its own --cache)", err, a.cfg.CacheDir)
	case errors.Is(err, cache.ErrUnusable):
		// Machines still run, reading from the store; c stays nil (its
		// Close is a no-op).
		a.log.Warn("cache unusable; machines read every block from the object store", "dir", a.cfg.CacheDir, "err", err)
	case err != nil:
		return fmt.Errorf("agent: %w", err)
	}
	a.cache = c
	a.metrics = newMetrics(c)
	a.metrics.reg.MustRegister(newVolumeCollector(a.volumeStats))
	ln, err := listen(a.cfg.Listen)
	if err != nil {
		c.Close()
		return err
	}
	warnCleartext(a.log, ln, a.tls != nil)
	a.apiURL = apiURL(ln, a.tls != nil)
	if a.tls != nil {
		ln = tls.NewListener(ln, a.tls)
	}
	errLog := slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	servers := []*http.Server{srv}
	listeners := []net.Listener{ln}
	if a.cfg.MetricsListen != "" {
		mln, err := listen(a.cfg.MetricsListen)
		if err != nil {
			ln.Close()
			c.Close()
			return fmt.Errorf("agent: metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.metricsHandler())
		servers = append(servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog})
		listeners = append(listeners, mln)
	}
	closeListeners := func() {
		for _, l := range listeners {
			l.Close()
		}
	}

	if err := a.checkNoTwin(ctx); err != nil {
		closeListeners()
		c.Close()
		return err
	}
	// Placements are versioned by create-if-absent: on a store that
	// ignores it two agents could both win a version. Refuse to start.
	if err := a.fleet.CheckWritable(ctx); err != nil {
		closeListeners()
		c.Close()
		return fmt.Errorf("agent: %w", err)
	}
	// First heartbeat before anything else: the host exists in the fleet.
	if err := a.heartbeat(ctx, false); err != nil {
		closeListeners()
		c.Close()
		return fmt.Errorf("agent: first heartbeat: %w", err)
	}
	a.log.Info("agent running", "api", a.apiURL, "cache", a.cfg.CacheDir, "state", a.cfg.StateDir,
		"heartbeat", a.cfg.HeartbeatInterval, "timeout", a.cfg.HeartbeatTimeout)

	var wg sync.WaitGroup
	apiErr := make(chan error, len(servers))
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				apiErr <- err
			}
		}()
	}
	runCtx, stopRunners := context.WithCancel(context.WithoutCancel(ctx))
	a.mu.Lock()
	a.runCtx = runCtx
	a.mu.Unlock()
	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	wg.Add(2)
	go func() { defer wg.Done(); a.heartbeatLoop(loopCtx) }()
	go func() { defer wg.Done(); a.reconcileLoop(loopCtx) }()
	if ready != nil {
		ready(a.apiURL)
	}

	var runErr error
	select {
	case <-ctx.Done():
		a.log.Info("agent stopping: stopping machines and flushing their volumes")
	case runErr = <-apiErr:
		a.log.Error("API server failed; stopping", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			a.log.Warn("API server did not shut down cleanly", "err", err)
		}
	}
	cancel()
	// Stop reconciling first, so no runner is created or told anything
	// while the runners stop.
	a.mu.Lock()
	stopLoops()
	a.runCtx = nil
	a.mu.Unlock()
	stopRunners()
	a.runWG.Wait()
	wg.Wait()
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	if err := a.heartbeat(hctx, true); err != nil {
		a.log.Warn("could not write the final heartbeat; other agents will notice the timeout instead", "err", err)
	}
	cancel()
	var errs []error
	if runErr != nil {
		errs = append(errs, fmt.Errorf("agent: API: %w", runErr))
	}
	if err := a.pools.close(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Close(); err != nil {
		errs = append(errs, fmt.Errorf("agent: close cache: %w", err))
	}
	a.log.Info("agent stopped")
	return errors.Join(errs...)
}

// checkNoTwin refuses to start while another agent with this id is live.
// If the id's heartbeat is fresh (say this agent was killed and restarted
// at once), it watches it for up to the timeout: if it changes, a twin is
// running; if it stays still, its writer is gone.
func (a *Agent) checkNoTwin(ctx context.Context) error {
	read := func() (*fleet.Heartbeat, error) {
		h, err := a.fleet.Heartbeat(ctx, a.cfg.ID)
		if err != nil {
			return nil, fmt.Errorf("agent: read this host's heartbeat: %w", err)
		}
		return h, nil
	}
	first, err := read()
	if err != nil || first == nil || fleet.AgeState(first, a.cfg.Now(), a.cfg.HeartbeatTimeout) != fleet.HostLive {
		return err
	}
	a.log.Info("this host's last heartbeat is fresh; making sure no other agent with this id is running", "last", first.Time)
	l := fleet.NewLiveness(a.cfg.HeartbeatTimeout)
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		h, err := read()
		if err != nil {
			return err
		}
		if h == nil {
			return nil
		}
		now := a.cfg.Now()
		l.Observe(now, []*fleet.Heartbeat{h})
		switch {
		case h.Seq != first.Seq || !h.Started.Equal(first.Started):
			return fmt.Errorf("agent: another agent with id %q is running (its API: %s): each host needs its own --id", a.cfg.ID, h.API)
		case l.State(a.cfg.ID, now) == fleet.HostDead:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listen opens "tcp:HOST:PORT" or "unix:/path".
func listen(spec string) (net.Listener, error) {
	network, addr, ok := strings.Cut(spec, ":")
	if !ok || addr == "" || (network != "tcp" && network != "unix") {
		return nil, fmt.Errorf("agent: --listen %q: want tcp:HOST:PORT or unix:/path", spec)
	}
	if network == "unix" {
		if err := os.Remove(addr); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("agent: --listen %q: %w", spec, err)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("agent: listen %s: %w", spec, err)
	}
	if network == "unix" {
		// The API runs commands on this host: only this user may connect.
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("agent: listen %s: set socket mode: %w", spec, err)
		}
	}
	return ln, nil
}

// apiURL is the base URL the agent advertises in its heartbeat; the
// scheme tells clients whether to use TLS.
func apiURL(ln net.Listener, tlsOn bool) string {
	if u, ok := ln.Addr().(*net.UnixAddr); ok {
		return "unix:" + u.Name
	}
	if tlsOn {
		return "https://" + ln.Addr().String()
	}
	return "http://" + ln.Addr().String()
}

// APIURL returns the API's base URL once Run listens.
func (a *Agent) APIURL() string { return a.apiURL }

// kick wakes a loop without blocking.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Reconcile asks the agent to compare desired and running state now.
func (a *Agent) Reconcile() { kick(a.kickReconcile) }

// heartbeatLoop writes the heartbeat every interval and when kicked.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	periodic.Run(ctx, a.cfg.HeartbeatInterval, a.kickHeartbeat, func() {
		hctx, cancel := context.WithTimeout(ctx, a.cfg.HeartbeatTimeout)
		defer cancel()
		if err := a.heartbeat(hctx, false); err != nil && ctx.Err() == nil {
			a.metrics.hbErrors.Inc()
			a.log.Warn("heartbeat failed", "err", err)
		}
	})
}

// heartbeat writes the heartbeat document with the next sequence number.
func (a *Agent) heartbeat(ctx context.Context, down bool) error {
	h := a.status(down)
	h.Seq = a.seq.Add(1)
	return a.fleet.PutHeartbeat(ctx, h)
}

// status builds the agent's heartbeat document.
func (a *Agent) status(down bool) *fleet.Heartbeat {
	a.mu.Lock()
	rs := make([]*runner, 0, len(a.runners))
	for _, r := range a.runners {
		rs = append(rs, r)
	}
	a.mu.Unlock()
	h := &fleet.Heartbeat{
		Host: a.cfg.ID, API: a.apiURL, Seq: a.seq.Load(), Started: a.started, Time: a.cfg.Now().UTC(),
		Interval: a.cfg.HeartbeatInterval, Timeout: a.cfg.HeartbeatTimeout, Down: down,
		Machines: []fleet.MachineStatus{}, Fenced: a.fencedCount.Load(),
	}
	phases := map[fleet.Phase]int{}
	for _, r := range rs {
		if st, ok := r.snapshot(); ok {
			h.Machines = append(h.Machines, st)
			phases[st.Phase]++
		}
	}
	sort.Slice(h.Machines, func(i, j int) bool { return h.Machines[i].Name < h.Machines[j].Name })
	if a.cache != nil {
		s := a.cache.Stats()
		h.Cache = fleet.CacheStats{Bytes: s.Bytes, Capacity: s.Capacity, Hits: s.Hits, Misses: s.Misses}
	}
	if a.metrics != nil {
		for _, ph := range []fleet.Phase{fleet.PhaseWaiting, fleet.PhaseStarting, fleet.PhaseRunning, fleet.PhaseStopping,
			fleet.PhaseStopped, fleet.PhaseExited, fleet.PhaseFenced, fleet.PhaseFailed} {
			a.metrics.machines.WithLabelValues(string(ph)).Set(float64(phases[ph]))
		}
	}
	return h
}
