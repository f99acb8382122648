package nbd

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxInFlight      = 64
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxConns         = 1024
	DefaultMaxQueuedBytes   = 256 << 20
	DefaultReplyTimeout     = time.Minute
)

// refusedLogEvery rate-limits the warning about connections refused over
// MaxConns: a flood of them must not become a flood of log lines.
const refusedLogEvery = 10 * time.Second

// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Export is a device served under a name.
type Export struct {
	// Device serves the data; the Server never closes it.
	Device blockdev.Device
	// Description is shown to clients (NBD_OPT_LIST, NBD_INFO_DESCRIPTION);
	// optional.
	Description string
}

// Options configure a Server. The zero value of each field picks its default.
type Options struct {
	// Exports by name. More can be added with Server.AddExport.
	Exports map[string]Export
	// Allow, if non-nil, is the allow-list of export names: only these are
	// listed and served, whatever Exports holds (an empty non-nil slice
	// serves nothing). Nil serves every export.
	Allow []string
	// TLSConfig enables NBD_OPT_STARTTLS. It needs at least one certificate.
	// Nil: TLS is refused with NBD_REP_ERR_POLICY.
	TLSConfig *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT until TLS is
	// up ("FORCEDTLS" in the protocol document). Needs TLSConfig.
	RequireTLS bool
	// Logger receives connection and error events. Nil discards them.
	Logger *slog.Logger
	// MaxPayload is the largest READ or WRITE length in bytes, advertised as
	// the maximum block size. Default 32 MiB; at least 4096, at most 1 GiB.
	MaxPayload int
	// MaxInFlight is the number of requests one connection may have in
	// progress at once (and the size of its worker set). Default 64.
	MaxInFlight int
	// MaxBufferBytes bounds the payload buffers one connection holds at
	// once (reads being answered plus writes being applied), in bytes.
	// Default twice the buffer size of a MaxPayload request; it cannot be
	// smaller than one such buffer.
	MaxBufferBytes int64
	// HandshakeTimeout bounds the whole handshake phase, TLS included.
	// Default 10 s. The transmission phase has no idle timeout.
	HandshakeTimeout time.Duration
	// MaxConns bounds the connections Serve keeps open at once (handshake
	// and transmission alike). One over the limit is accepted and closed
	// at once, so that idle clients cannot exhaust the process's file
	// descriptors. Default 1024.
	MaxConns int
	// MaxQueuedBytes bounds the payload buffers held by all connections
	// together (reads being answered, writes being applied), in bytes. A
	// connection that would exceed it stops reading requests until others
	// release theirs (back-pressure, not memory). Default 256 MiB, and
	// never less than MaxBufferBytes. Ignored when Budget is set.
	MaxQueuedBytes int64
	// Budget, if set, is the payload budget this server draws from instead
	// of one of its own, so that several servers of one process (an
	// agent's machines, each with a server of its own) share one bound
	// rather than holding one each.
	Budget *Budget
	// ReplyTimeout is how long sending one reply may block because the
	// client does not read: after it (at least 7/8 of it, see
	// replyWriter.arm) the connection is closed and its buffers are
	// released. Default 1 minute.
	ReplyTimeout time.Duration
	// OnFenced, if set, is called (on a goroutine of its own) once per
	// export when a device call of that export first fails with
	// blockdev.ErrFenced. From then on new clients are refused that export.
	OnFenced func(export string)
}

// Stats is a snapshot of a Server's resource use.
type Stats struct {
	Conns          int   // connections open (handshake or transmission)
	RefusedConns   int64 // connections closed at accept because of MaxConns
	QueuedBytes    int64 // payload buffer bytes held by all connections (of every server sharing its Budget)
	MaxQueuedBytes int64 // the bound on QueuedBytes
}

// Server serves block devices over the NBD protocol. Create it with
// NewServer; its methods are safe for concurrent use.
type Server struct {
	opts   Options // normalized; Exports is not used after NewServer
	log    *slog.Logger
	allow  map[string]bool // nil: all exports allowed
	pool   *bufPool
	nextID atomic.Uint64 // connection ids for logs

	// queued bounds payload buffers over all connections (and over other
	// servers sharing Options.Budget).
	queued *Budget
	// open counts connections accepted by Serve and not yet closed.
	open    atomic.Int64
	refused atomic.Int64

	// active counts registered connections; Add only under mu while
	// !shuttingDown, so Shutdown's Wait is safe.
	active sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu:
	exports      map[string]*exportEntry
	listeners    map[net.Listener]struct{}
	conns        map[*conn]struct{}
	shuttingDown bool
}

// exportEntry is one registered export; its identity (pointer) tells a
// connection whether the export it negotiated is still the current one.
type exportEntry struct {
	name   string
	fenced atomic.Bool // a device call failed with blockdev.ErrFenced
	Export
}

// NewServer validates opts and returns a Server.
func NewServer(opts Options) (*Server, error) {
	if opts.MaxPayload == 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.MaxPayload < 4096 || opts.MaxPayload > 1<<30 {
		return nil, fmt.Errorf("nbd: MaxPayload %d out of range [4096, 1 GiB]", opts.MaxPayload)
	}
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxInFlight < 1 || opts.MaxInFlight > 4096 {
		return nil, fmt.Errorf("nbd: MaxInFlight %d out of range [1, 4096]", opts.MaxInFlight)
	}
	bufMax := int64(classSize(opts.MaxPayload))
	if opts.MaxBufferBytes == 0 {
		opts.MaxBufferBytes = 2 * bufMax
	}
	if opts.MaxBufferBytes < bufMax {
		return nil, fmt.Errorf("nbd: MaxBufferBytes %d is smaller than one %d-byte payload buffer", opts.MaxBufferBytes, bufMax)
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.HandshakeTimeout < 0 {
		return nil, fmt.Errorf("nbd: negative HandshakeTimeout %v", opts.HandshakeTimeout)
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.MaxConns < 1 {
		return nil, fmt.Errorf("nbd: MaxConns %d: want at least 1", opts.MaxConns)
	}
	if opts.Budget != nil {
		opts.MaxQueuedBytes = opts.Budget.max
	}
	if opts.MaxQueuedBytes == 0 {
		opts.MaxQueuedBytes = max(DefaultMaxQueuedBytes, opts.MaxBufferBytes)
	}
	if opts.MaxQueuedBytes < opts.MaxBufferBytes {
		return nil, fmt.Errorf("nbd: MaxQueuedBytes %d is smaller than MaxBufferBytes %d", opts.MaxQueuedBytes, opts.MaxBufferBytes)
	}
	if opts.ReplyTimeout == 0 {
		opts.ReplyTimeout = DefaultReplyTimeout
	}
	if opts.ReplyTimeout < 0 {
		return nil, fmt.Errorf("nbd: negative ReplyTimeout %v", opts.ReplyTimeout)
	}
	if opts.RequireTLS && opts.TLSConfig == nil {
		return nil, errors.New("nbd: RequireTLS needs a TLSConfig")
	}
	if opts.TLSConfig != nil {
		opts.TLSConfig = opts.TLSConfig.Clone()
		if len(opts.TLSConfig.Certificates) == 0 && opts.TLSConfig.GetCertificate == nil && opts.TLSConfig.GetConfigForClient == nil {
			return nil, errors.New("nbd: TLSConfig has no certificate")
		}
		if opts.TLSConfig.MinVersion == 0 {
			opts.TLSConfig.MinVersion = tls.VersionTLS12
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Budget == nil {
		opts.Budget = NewBudget(opts.MaxQueuedBytes)
	}
	s := &Server{
		opts:      opts,
		log:       log,
		pool:      newBufPool(opts.MaxPayload),
		queued:    opts.Budget,
		exports:   make(map[string]*exportEntry),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	if opts.Allow != nil {
		s.allow = make(map[string]bool, len(opts.Allow))
		for _, name := range opts.Allow {
			s.allow[name] = true
		}
	}
	for name, e := range opts.Exports {
		if err := s.AddExport(name, e); err != nil {
			return nil, err
		}
	}
	s.opts.Exports = nil
	return s, nil
}

// AddExport makes e available under name to new connections.
func (s *Server) AddExport(name string, e Export) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("nbd: add export %q: %w", name, err)
	}
	if e.Device == nil {
		return fmt.Errorf("nbd: add export %q: nil device", name)
	}
	if e.Device.Size() < 0 {
		return fmt.Errorf("nbd: add export %q: negative size %d", name, e.Device.Size())
	}
	if err := checkName(e.Description); err != nil {
		return fmt.Errorf("nbd: add export %q: description: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[name]; ok {
		return fmt.Errorf("nbd: add export %q: already exported", name)
	}
	s.exports[name] = &exportEntry{name: name, Export: e}
	return nil
}

// RemoveExport withdraws an export: new connections no longer see it, and
// connections using it stop reading requests, finish and answer those in
// flight, and close. It returns when they are closed; if ctx ends first
// they are closed at once (in-flight device calls see a cancelled context)
// and ctx's error is returned after they exit. The device is not closed.
func (s *Server) RemoveExport(ctx context.Context, name string) error {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("nbd: remove export %q: not exported", name)
	}
	delete(s.exports, name)
	var users []*conn
	for c := range s.conns {
		if c.exportEntry() == e {
			users = append(users, c)
		}
	}
	s.mu.Unlock()
	return drainConns(ctx, users)
}

// drainConns drains conns gracefully, closing them hard if ctx ends first.
func drainConns(ctx context.Context, conns []*conn) error {
	for _, c := range conns {
		c.drain()
	}
	for i, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns[i:] {
				c.forceClose()
			}
			for _, c := range conns[i:] {
				<-c.done
			}
			return ctx.Err()
		}
	}
	return nil
}

// lookup resolves a client's export name: the allow-list applies, and ""
// means the only served export when there is exactly one.
func (s *Server) lookup(name string) (*exportEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[name]; ok && s.allowed(name) {
		return e, true
	}
	if name != "" {
		return nil, false
	}
	var only *exportEntry
	for n, e := range s.exports {
		if !s.allowed(n) {
			continue
		}
		if only != nil {
			return nil, false
		}
		only = e
	}
	return only, only != nil
}

// allowed reports whether the allow-list permits name. Caller holds mu.
func (s *Server) allowed(name string) bool {
	return s.allow == nil || s.allow[name]
}

// listExports returns the served exports sorted by name.
func (s *Server) listExports() []*exportEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*exportEntry, 0, len(s.exports))
	for n, e := range s.exports {
		if s.allowed(n) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Shutdown or ctx ends. ctx is also the parent of the context given
// to device calls. Serve closes ln. It returns only once every connection
// it accepted has closed: after Shutdown it returns ErrServerClosed; when
// ctx ends, its connections are closed at once and ctx's error is returned.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.shuttingDown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	var backoff time.Duration
	var lastRefusedLog time.Time
	var refusedSinceLog int64
	for {
		nc, err := ln.Accept()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				cancel()
				wg.Wait()
				return ctx.Err()
			case s.isShuttingDown():
				wg.Wait() // Shutdown drains these connections
				return ErrServerClosed
			case errors.Is(err, net.ErrClosed):
				cancel()
				wg.Wait()
				return fmt.Errorf("nbd: accept: %w", err)
			}
			// Transient (e.g. out of file descriptors): back off and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		if s.open.Load() >= int64(s.opts.MaxConns) {
			// Close at once: holding the socket would cost the fd the
			// limit protects. One warning per period, with a count
			// (counted first: a refused client that saw the close must
			// find it in Stats).
			s.refused.Add(1)
			nc.Close()
			refusedSinceLog++
			if now := time.Now(); now.Sub(lastRefusedLog) >= refusedLogEvery {
				s.log.Warn("nbd: connection limit reached; refusing new connections",
					"max_conns", s.opts.MaxConns, "refused_since_last_warning", refusedSinceLog)
				lastRefusedLog, refusedSinceLog = now, 0
			}
			continue
		}
		s.open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.open.Add(-1)
			if err := s.ServeConn(ctx, nc); err != nil && !errors.Is(err, ErrServerClosed) {
				s.log.Debug("nbd: connection ended with error", "err", err)
			}
		}()
	}
}

// Budget bounds the payload buffer bytes held by the connections of every
// server that shares it. Create it with NewBudget.
type Budget struct {
	sem  *semaphore.Weighted
	used atomic.Int64 // mirrors sem's use for Stats (it does not expose it)
	max  int64
}

// NewBudget returns a budget of max bytes (at least 1).
func NewBudget(max int64) *Budget {
	max = cmp.Or(max, 1) // a zero budget would block every READ forever
	return &Budget{sem: semaphore.NewWeighted(max), max: max}
}

// Used returns the bytes held now.
func (b *Budget) Used() int64 { return b.used.Load() }

// acquireQueued takes n bytes of the payload budget, waiting for other
// connections (of this server or of servers sharing the budget) to release
// theirs.
func (s *Server) acquireQueued(ctx context.Context, n int64) error {
	if err := s.queued.sem.Acquire(ctx, n); err != nil {
		return err
	}
	s.queued.used.Add(n)
	return nil
}

func (s *Server) releaseQueued(n int64) {
	s.queued.used.Add(-n)
	s.queued.sem.Release(n)
}

// Stats returns the server's current resource use.
func (s *Server) Stats() Stats {
	return Stats{
		Conns:          int(s.open.Load()),
		RefusedConns:   s.refused.Load(),
		QueuedBytes:    s.queued.Used(),
		MaxQueuedBytes: s.opts.MaxQueuedBytes,
	}
}

// MarkFenced records that export name's device was fenced (another writer
// took over its volume), as if a device call had failed with
// blockdev.ErrFenced: new clients are refused it and OnFenced is called
// if this is news. Callers that learn of fencing without a client request
// (a background upload found it) use this. Unknown names are ignored.
func (s *Server) MarkFenced(name string) {
	s.mu.Lock()
	e := s.exports[name]
	s.mu.Unlock()
	if e != nil {
		s.markFenced(e)
	}
}

// markFenced flags e as fenced, once.
func (s *Server) markFenced(e *exportEntry) {
	if !e.fenced.CompareAndSwap(false, true) {
		return
	}
	s.log.Error("nbd: export fenced (another writer took over its volume); refusing new clients for it", "export", e.name)
	if f := s.opts.OnFenced; f != nil {
		// On its own goroutine: the callback may shut the server down,
		// which waits for the connection that called us.
		go f(e.name)
	}
}

func (s *Server) isShuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shuttingDown
}

// ServeConn serves one already-accepted connection until the client
// disconnects, Shutdown drains it, or ctx ends (which closes it at once).
// It always closes nc. It returns nil after a clean disconnect
// (NBD_OPT_ABORT, NBD_CMD_DISC, EOF between requests, drain) and an error
// describing a protocol violation or I/O failure otherwise.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	c, ok := s.register(ctx, nc)
	if !ok {
		nc.Close()
		return ErrServerClosed
	}
	defer s.unregister(c)
	return c.serve()
}

// register creates and tracks a conn; false after Shutdown began.
func (s *Server) register(ctx context.Context, nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown {
		return nil, false
	}
	c := newConn(ctx, s, nc)
	s.conns[c] = struct{}{}
	s.active.Add(1)
	return c, true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	close(c.done)
	s.active.Done()
}

// Shutdown stops the server gracefully: it closes the listeners, closes
// connections still in the handshake, and lets connections in the
// transmission phase finish and answer the requests they have received
// before closing them. If ctx ends first, the remaining connections are
// closed at once (device calls see a cancelled context), Shutdown waits for
// their goroutines to exit, and returns ctx's error. Shutdown does not close
// the devices.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shuttingDown = true
	var errs []error
	for ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("nbd: close listener %s: %w", ln.Addr(), err))
		}
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	if err := drainConns(ctx, conns); err != nil {
		errs = append(errs, err)
	}
	s.active.Wait() // every conn registered before shuttingDown is in conns
	return errors.Join(errs...)
}

// enterTransmission switches c to the transmission phase for export e, unless
// the export was removed or the server or connection is shutting down.
// Holding s.mu makes the check and the switch atomic with respect to
// RemoveExport and Shutdown.
func (s *Server) enterTransmission(c *conn, e *exportEntry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown || s.exports[e.name] != e {
		return false
	}
	return c.startTransmission(e)
}

// FitMaxConns caps a connection limit so that reserve file descriptors
// stay free for everything else (object-store sockets, cache files, logs)
// under an RLIMIT_NOFILE of fdLimit: connections that exhaust the
// descriptors make uploads fail and leave existing clients unanswered.
// The result is at least 8 (or want, if smaller), however small the limit.
func FitMaxConns(want int, fdLimit uint64, reserve int) int {
	const minConns = 8
	if fdLimit == 0 || fdLimit > 1<<30 {
		return want // unknown or effectively unlimited
	}
	room := int(fdLimit) - reserve
	return min(want, max(room, minConns))
}
