package nbd

import (
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

	"github.com/urldisk/urldisk/internal/blockdev"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxInFlight      = 64
	DefaultHandshakeTimeout = 30 * time.Second
)

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
	// Default 30 s. The transmission phase has no idle timeout.
	HandshakeTimeout time.Duration
}

// Server serves block devices over the NBD protocol. Create it with
// NewServer; its methods are safe for concurrent use.
type Server struct {
	opts   Options // normalized; Exports is not used after NewServer
	log    *slog.Logger
	allow  map[string]bool // nil: all exports allowed
	pool   *bufPool
	nextID atomic.Uint64 // connection ids for logs

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
	name string
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
	s := &Server{
		opts:      opts,
		log:       log,
		pool:      newBufPool(opts.MaxPayload),
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, nc); err != nil && !errors.Is(err, ErrServerClosed) {
				s.log.Debug("nbd: connection ended with error", "err", err)
			}
		}()
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
