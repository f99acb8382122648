package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Buffer sizes per connection.
const (
	readBufSize      = 64 << 10  // request headers are batched through this
	handshakeBufSize = 4 << 10   // option replies
	replyBufSize     = 128 << 10 // coalesces reply headers and small reads
)

// connState is a connection's phase.
type connState int

const (
	stateHandshake    connState = iota // option haggling; a deadline applies
	stateTransmission                  // serving requests
	stateDraining                      // no new requests; finishing in-flight ones
	stateClosed                        // closed by drain during the handshake
)

// errAbort is a clean end of the handshake requested by the client.
var errAbort = errors.New("client aborted the handshake")

// errClientGone: the client closed the connection between options.
var errClientGone = errors.New("client closed the connection during the handshake")

// errExportFenced: a client asked for an export whose volume was fenced.
var errExportFenced = errors.New("export fenced: another writer took over its volume")

// conn is one client connection. Its goroutine (ServeConn) owns the reader
// side; drain and forceClose may be called from other goroutines.
type conn struct {
	srv    *Server
	raw    net.Conn // the accepted socket; deadlines and hard close act on it
	log    *slog.Logger
	ctx    context.Context // parent of device calls; cancelled by forceClose
	cancel context.CancelFunc
	stop   func() bool   // unregisters the ctx AfterFunc
	done   chan struct{} // closed when ServeConn returns

	mu sync.Mutex
	// Guarded by mu:
	state  connState
	export *exportEntry // set on entering transmission
}

func newConn(ctx context.Context, s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(ctx)
	c := &conn{
		srv:    s,
		raw:    nc,
		log:    s.log.With("conn", s.nextID.Add(1), "remote", remoteName(nc)),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	// Whoever cancels ctx (Serve's caller, forceClose) unblocks all I/O.
	c.stop = context.AfterFunc(ctx, func() { nc.Close() })
	return c
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "local"
}

// exportEntry returns the export in use (nil during the handshake).
func (c *conn) exportEntry() *exportEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.export
}

// startTransmission moves from handshake to transmission. Called with
// srv.mu held (lock order: srv.mu, then c.mu).
func (c *conn) startTransmission(e *exportEntry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateHandshake {
		return false
	}
	c.state = stateTransmission
	c.export = e
	// The handshake deadline no longer applies: clients may idle.
	c.raw.SetDeadline(time.Time{})
	return true
}

// drain asks the connection to stop: during the handshake it is closed at
// once; in transmission it stops reading requests, finishes and answers the
// ones in flight, then closes.
func (c *conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateHandshake:
		c.state = stateClosed
		c.raw.Close()
	case stateTransmission:
		c.state = stateDraining
		// Wake the reader; requests already buffered are still served.
		c.raw.SetReadDeadline(time.Now())
	}
}

// draining reports whether drain was called in transmission.
func (c *conn) draining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateDraining
}

// forceClose closes the connection at once and cancels device calls.
func (c *conn) forceClose() {
	c.cancel() // the AfterFunc closes raw
}

// serve runs the handshake and then the transmission phase.
func (c *conn) serve() error {
	defer c.cancel()
	defer c.stop()
	c.log.Debug("nbd: connection opened")

	c.raw.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	hs := &handshake{
		c:  c,
		nc: c.raw,
		r:  bufio.NewReaderSize(c.raw, readBufSize),
		w:  bufio.NewWriterSize(c.raw, handshakeBufSize),
	}
	e, err := hs.run()
	if err != nil {
		c.raw.Close()
		switch {
		case errors.Is(err, errAbort), errors.Is(err, errClientGone):
			c.log.Debug("nbd: handshake ended by the client", "reason", err)
			return nil
		case errors.Is(err, errExportFenced):
			// Expected after a takeover; clients may retry in a loop, so
			// no line per attempt (markFenced logged the fence once).
			c.log.Debug("nbd: refused a fenced export", "err", err)
			return fmt.Errorf("nbd handshake: %w", err)
		}
		if c.ctx.Err() != nil || c.stateIs(stateClosed) {
			return ErrServerClosed
		}
		c.log.Info("nbd: handshake failed", "err", err)
		return fmt.Errorf("nbd handshake: %w", err)
	}
	if !c.srv.enterTransmission(c, e) {
		c.raw.Close()
		c.log.Info("nbd: export withdrawn or server shutting down during handshake", "export", e.name)
		return ErrServerClosed
	}
	c.log.Debug("nbd: transmission started", "export", e.name, "tls", hs.tls)

	hs.w.Reset(nil) // the handshake writer's buffer is no longer needed
	s := newSession(c, e, hs.nc, hs.r)
	err = s.run()
	// Graceful close: a tls.Conn sends close_notify first.
	if cerr := hs.nc.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
		c.log.Debug("nbd: close", "err", cerr)
	}
	if err != nil {
		return fmt.Errorf("nbd export %q: %w", e.name, err)
	}
	return nil
}

func (c *conn) stateIs(st connState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == st
}
