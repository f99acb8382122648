package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

// testTimeout bounds every blocking step in these tests: a hang fails the
// test instead of stalling it.
const testTimeout = 20 * time.Second

// testLogger logs to the test output at debug level.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// newTestServer builds a server; opts.Logger defaults to the test log.
func newTestServer(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return srv
}

// testClient is a minimal NBD client speaking over one connection, with
// raw access for malformed-input tests.
type testClient struct {
	t  testing.TB
	nc net.Conn
}

// pipeConn runs srv.ServeConn on one end of a net.Pipe and returns a client
// on the other end and a channel that receives ServeConn's result.
func pipeConn(t testing.TB, srv *Server) (*testClient, <-chan error) {
	t.Helper()
	cs, ss := net.Pipe()
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- srv.ServeConn(context.Background(), ss)
	}()
	cs.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() {
		cs.Close()
		select {
		case <-finished: // no server goroutine outlives the test (and its logger)
		case <-time.After(testTimeout):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	return &testClient{t: t, nc: cs}, done
}

// waitDone waits for ServeConn's result.
func waitDone(t testing.TB, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(testTimeout):
		t.Fatal("ServeConn did not return")
		return nil
	}
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *testClient) readFull(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.nc, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed asserts that the server closes the connection.
func (c *testClient) expectClosed() {
	c.t.Helper()
	var b [1]byte
	for {
		_, err := c.nc.Read(b[:])
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			c.t.Fatalf("expected the server to close the connection, got %v", err)
		}
	}
}

// greet reads the server greeting and sends client flags.
func (c *testClient) greet(flags uint32) {
	c.t.Helper()
	g := c.readFull(18)
	if binary.BigEndian.Uint64(g[0:8]) != magicInit || binary.BigEndian.Uint64(g[8:16]) != magicOpts {
		c.t.Fatalf("bad greeting %x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:18]); f != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (c *testClient) sendOption(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *testClient) readOptReply() optReply {
	c.t.Helper()
	h := c.readFull(optReplyHeadLen)
	if m := binary.BigEndian.Uint64(h[0:8]); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:12]), typ: binary.BigEndian.Uint32(h[12:16])}
	r.data = c.readFull(int(binary.BigEndian.Uint32(h[16:20])))
	return r
}

// infoData encodes NBD_OPT_INFO/GO data.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// exportInfo is what NBD_OPT_INFO/GO told the client.
type exportInfo struct {
	size                          uint64
	flags                         uint16
	name, description             string
	minBlock, prefBlock, maxBlock uint32
}

// info sends NBD_OPT_INFO or NBD_OPT_GO and collects the replies. It returns
// the final reply type (repAck or an error).
func (c *testClient) info(opt uint32, name string) (exportInfo, uint32) {
	c.t.Helper()
	c.sendOption(opt, infoData(name, infoBlockSize, infoName, infoDescription))
	var ei exportInfo
	sawExport := false
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			if r.typ == repAck && !sawExport {
				c.t.Fatal("NBD_REP_ACK without NBD_INFO_EXPORT")
			}
			return ei, r.typ
		}
		if len(r.data) < 2 {
			c.t.Fatalf("short NBD_REP_INFO %x", r.data)
		}
		d := r.data[2:]
		switch binary.BigEndian.Uint16(r.data) {
		case infoExport:
			if len(d) != 10 {
				c.t.Fatalf("NBD_INFO_EXPORT length %d", len(r.data))
			}
			sawExport = true
			ei.size = binary.BigEndian.Uint64(d)
			ei.flags = binary.BigEndian.Uint16(d[8:])
		case infoName:
			ei.name = string(d)
		case infoDescription:
			ei.description = string(d)
		case infoBlockSize:
			if len(d) != 12 {
				c.t.Fatalf("NBD_INFO_BLOCK_SIZE length %d", len(r.data))
			}
			ei.minBlock = binary.BigEndian.Uint32(d)
			ei.prefBlock = binary.BigEndian.Uint32(d[4:])
			ei.maxBlock = binary.BigEndian.Uint32(d[8:])
		}
	}
}

// connect does greeting, flags and NBD_OPT_GO for name, failing the test
// unless the server accepts.
func (c *testClient) connect(name string) exportInfo {
	c.t.Helper()
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	ei, typ := c.info(optGo, name)
	if typ != repAck {
		c.t.Fatalf("NBD_OPT_GO %q: reply %#x", name, typ)
	}
	return ei
}

func requestBytes(flags, typ uint16, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func (c *testClient) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	c.write(append(requestBytes(flags, typ, handle, off, length), payload...))
}

// readReply reads a simple reply header.
func (c *testClient) readReply() (errno uint32, handle uint64) {
	c.t.Helper()
	h := c.readFull(simpleReplyLen)
	if m := binary.BigEndian.Uint32(h); m != magicSimpleReply {
		c.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// do sends one request and waits for its reply (no other request in flight).
func (c *testClient) do(flags, typ uint16, off uint64, length uint32, payload []byte) uint32 {
	c.t.Helper()
	c.request(flags, typ, 7, off, length, payload)
	errno, h := c.readReply()
	if h != 7 {
		c.t.Fatalf("reply handle %d, want 7", h)
	}
	return errno
}

// pread reads n bytes at off; data is nil on error.
func (c *testClient) pread(off uint64, n uint32) ([]byte, uint32) {
	c.t.Helper()
	c.request(0, cmdRead, 9, off, n, nil)
	errno, h := c.readReply()
	if h != 9 {
		c.t.Fatalf("reply handle %d, want 9", h)
	}
	if errno != 0 {
		return nil, errno
	}
	return c.readFull(int(n)), 0
}

func (c *testClient) disconnect() {
	c.t.Helper()
	c.request(0, cmdDisc, 0, 0, 0, nil)
}

// ramExport returns a single-export Options with a fresh RAM disk.
func ramExport(size int64, readOnly bool) (Options, *nbdtest.RAMDisk) {
	d := nbdtest.NewRAMDisk(size, 4096, readOnly)
	return Options{Exports: map[string]Export{"disk": {Device: d, Description: "test disk"}}}, d
}

// shortTempDir returns a temporary directory with a path short enough for
// unix socket names (108 bytes).
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveUnix starts srv on a unix socket and returns the socket path. At
// cleanup the server is shut down and Serve must return ErrServerClosed.
func serveUnix(t testing.TB, srv *Server) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "nbd.sock")
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, ln)
	return path
}

// serveOn serves srv on ln until cleanup.
func serveOn(t testing.TB, srv *Server, ln net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(testTimeout):
			t.Error("Serve did not return after Shutdown")
		}
	})
}
