package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

// checkNoViolations fails if the server ever called the device out of range.
func checkNoViolations(t *testing.T, d *nbdtest.RAMDisk) {
	t.Helper()
	if n := d.Violations(); n != 0 {
		t.Errorf("device was called with %d out-of-range requests", n)
	}
}

func TestReadWriteUnaligned(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")

	payload := bytes.Repeat([]byte("urldisk!"), 1000)[:7777]
	if errno := c.do(0, cmdWrite, 12345, uint32(len(payload)), payload); errno != 0 {
		t.Fatalf("write errno %d", errno)
	}
	got, errno := c.pread(12345, uint32(len(payload)))
	if errno != 0 || !bytes.Equal(got, payload) {
		t.Fatalf("read back errno %d, equal %v", errno, bytes.Equal(got, payload))
	}
	// Write at the very end, zero-length requests at the end.
	if errno := c.do(0, cmdWrite, 1<<20-3, 3, []byte("end")); errno != 0 {
		t.Errorf("write at end: errno %d", errno)
	}
	if errno := c.do(0, cmdWrite, 1<<20, 0, nil); errno != 0 {
		t.Errorf("empty write at end: errno %d", errno)
	}
	if _, errno := c.pread(1<<20, 0); errno != 0 {
		t.Errorf("empty read at end: errno %d", errno)
	}
	if errno := c.do(0, cmdWriteZeroes, 12345+100, 200, nil); errno != 0 {
		t.Errorf("write zeroes: errno %d", errno)
	}
	if errno := c.do(cmdFlagNoHole, cmdWriteZeroes, 12345+400, 100, nil); errno != 0 {
		t.Errorf("write zeroes NO_HOLE: errno %d", errno)
	}
	if errno := c.do(0, cmdTrim, 12345+1000, 1000, nil); errno != 0 {
		t.Errorf("trim: errno %d", errno)
	}
	want := make([]byte, 1<<20)
	copy(want[12345:], payload)
	clear(want[12345+100 : 12345+300])
	clear(want[12345+400 : 12345+500])
	clear(want[12345+1000 : 12345+2000])
	copy(want[1<<20-3:], "end")
	if !bytes.Equal(d.Bytes(), want) {
		t.Error("device contents differ from the expected model")
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
	checkNoViolations(t, d)
}

func TestFUAAndFlush(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, _ := pipeConn(t, srv)
	c.connect("disk")
	if errno := c.do(0, cmdWrite, 0, 4, []byte("abcd")); errno != 0 || d.Flushes() != 0 {
		t.Fatalf("plain write: errno %d, flushes %d", errno, d.Flushes())
	}
	// The flush must have happened before the reply was sent.
	if errno := c.do(cmdFlagFUA, cmdWrite, 0, 4, []byte("abcd")); errno != 0 || d.Flushes() != 1 {
		t.Fatalf("FUA write: errno %d, flushes %d", errno, d.Flushes())
	}
	if errno := c.do(cmdFlagFUA, cmdTrim, 0, 4, nil); errno != 0 || d.Flushes() != 2 {
		t.Fatalf("FUA trim: errno %d, flushes %d", errno, d.Flushes())
	}
	if errno := c.do(cmdFlagFUA, cmdWriteZeroes, 0, 4, nil); errno != 0 || d.Flushes() != 3 {
		t.Fatalf("FUA write zeroes: errno %d, flushes %d", errno, d.Flushes())
	}
	if errno := c.do(0, cmdFlush, 0, 0, nil); errno != 0 || d.Flushes() != 4 {
		t.Fatalf("flush: errno %d, flushes %d", errno, d.Flushes())
	}
	// FUA on a read is accepted and ignored.
	c.request(cmdFlagFUA, cmdRead, 1, 0, 4, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("FUA read: errno %d", errno)
	}
	c.readFull(4)
}

// A FLUSH must not run until the writes received before it have completed.
func TestFlushWaitsForEarlierWrites(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	release := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	d.SetHook(nbdtest.OpWrite, func(ctx context.Context, off, length int64) {
		if off == 0 {
			once.Do(func() { close(entered) })
			<-release
		}
	})
	var flushSawWrites int64 = -1
	d.SetHook(nbdtest.OpFlush, func(ctx context.Context, off, length int64) {
		flushSawWrites = d.Writes()
	})
	c, _ := pipeConn(t, srv)
	c.connect("disk")
	c.request(0, cmdWrite, 1, 0, 3, []byte("one"))
	<-entered
	c.request(0, cmdWrite, 2, 4096, 3, []byte("two")) // not blocked
	c.request(0, cmdFlush, 3, 0, 0, nil)
	// The unblocked write replies; the flush must not.
	if errno, h := c.readReply(); errno != 0 || h != 2 {
		t.Fatalf("first reply: handle %d errno %d, want the second write", h, errno)
	}
	c.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("a reply arrived while the first write was still blocked")
	}
	c.nc.SetReadDeadline(time.Now().Add(testTimeout))
	close(release)
	got := map[uint64]uint32{}
	for range 2 {
		errno, h := c.readReply()
		got[h] = errno
	}
	if got[1] != 0 || got[3] != 0 {
		t.Fatalf("replies %v", got)
	}
	if flushSawWrites != 2 {
		t.Errorf("device Flush ran after %d completed writes, want 2", flushSawWrites)
	}
}

func TestMalformedRequests(t *testing.T) {
	const size = 1 << 20
	opts, d := ramExport(size, false)
	opts.MaxPayload = 64 << 10
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	for _, tc := range []struct {
		name    string
		flags   uint16
		typ     uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32
	}{
		{"read past end", 0, cmdRead, size - 10, 11, nil, errInval},
		{"read offset past end", 0, cmdRead, size + 1, 0, nil, errInval},
		{"read offset overflow", 0, cmdRead, 1<<64 - 1, 2, nil, errInval},
		{"read longer than max payload", 0, cmdRead, 0, 64<<10 + 1, nil, errInval},
		{"write past end", 0, cmdWrite, size - 2, 3, []byte("xyz"), errInval},
		{"write offset overflow", 0, cmdWrite, 1<<64 - 2, 3, []byte("xyz"), errInval},
		{"trim past end", 0, cmdTrim, size - 2, 3, nil, errInval},
		{"write zeroes past end", 0, cmdWriteZeroes, 1, size, nil, errInval},
		{"write zeroes huge", 0, cmdWriteZeroes, 0, 1<<32 - 1, nil, errInval},
		{"unknown flag on read", 1 << 7, cmdRead, 0, 1, nil, errInval},
		{"no-hole on write", cmdFlagNoHole, cmdWrite, 0, 3, []byte("xyz"), errInval},
		{"no-hole on trim", cmdFlagNoHole, cmdTrim, 0, 3, nil, errInval},
		{"unknown flag on flush", 1 << 4, cmdFlush, 0, 0, nil, errInval},
		{"block status not negotiated", 0, cmdBlockStatus, 0, 512, nil, errInval},
		{"cache not advertised", 0, cmdCache, 0, 512, nil, errInval},
		{"unknown command without length", 0, 42, 0, 0, nil, errInval},
	} {
		errno := c.do(tc.flags, tc.typ, tc.off, tc.length, tc.payload)
		if errno != tc.want {
			t.Errorf("%s: errno %d, want %d", tc.name, errno, tc.want)
		}
	}
	// Still in sync: a good request works.
	if errno := c.do(0, cmdWrite, 0, 3, []byte("abc")); errno != 0 {
		t.Fatalf("write after malformed requests: errno %d", errno)
	}
	if !bytes.Equal(d.Bytes()[:3], []byte("abc")) {
		t.Error("write after malformed requests did not land")
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
	checkNoViolations(t, d)
	if d.Writes() != 1 {
		t.Errorf("device saw %d writes, want 1", d.Writes())
	}
}

func TestBadRequestMagic(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	b := requestBytes(0, cmdRead, 1, 0, 512)
	b[0] ^= 0xff
	c.write(b)
	c.expectClosed()
	if err := waitDone(t, done); !errors.Is(err, errBadRequestMagic) {
		t.Errorf("ServeConn: %v, want errBadRequestMagic", err)
	}
	checkNoViolations(t, d)
}

func TestOversizeWrite(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	opts.MaxPayload = 64 << 10
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	c.request(0, cmdWrite, 5, 0, 64<<10+1, nil) // the payload would follow
	if errno, h := c.readReply(); errno != errInval || h != 5 {
		t.Errorf("oversize write: errno %d handle %d", errno, h)
	}
	c.expectClosed()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after an oversize write")
	}
	if d.Writes() != 0 {
		t.Error("oversize write reached the device")
	}
}

func TestUnknownCommandWithLength(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	c.request(0, 42, 5, 0, 100, nil)
	if errno, _ := c.readReply(); errno != errInval {
		t.Errorf("unknown command: errno %d", errno)
	}
	c.expectClosed()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after an unknown command with a length")
	}
}

func TestDisconnectMidPayload(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	c.write(append(requestBytes(0, cmdWrite, 1, 0, 4096), make([]byte, 1000)...))
	c.nc.Close()
	err := waitDone(t, done)
	if err == nil || !strings.Contains(err.Error(), "mid-request") {
		t.Errorf("ServeConn: %v, want mid-request error", err)
	}
	if d.Writes() != 0 {
		t.Error("partial write reached the device")
	}
}

func TestDisconnectMidHeader(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.connect("disk")
	c.write(requestBytes(0, cmdRead, 1, 0, 512)[:10])
	c.nc.Close()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after disconnect mid-header")
	}
}

func TestReadOnlyExport(t *testing.T) {
	opts, d := ramExport(1<<20, true)
	d.SetBytes(0, []byte("hello"))
	srv := newTestServer(t, opts)
	c, _ := pipeConn(t, srv)
	ei := c.connect("disk")
	if ei.flags&tflagReadOnly == 0 {
		t.Errorf("flags %#x lack READ_ONLY", ei.flags)
	}
	if errno := c.do(0, cmdWrite, 0, 3, []byte("xyz")); errno != errPerm {
		t.Errorf("write: errno %d, want EPERM", errno)
	}
	if errno := c.do(0, cmdTrim, 0, 3, nil); errno != errPerm {
		t.Errorf("trim: errno %d, want EPERM", errno)
	}
	if errno := c.do(0, cmdWriteZeroes, 0, 3, nil); errno != errPerm {
		t.Errorf("write zeroes: errno %d, want EPERM", errno)
	}
	if data, errno := c.pread(0, 5); errno != 0 || string(data) != "hello" {
		t.Errorf("read: %q errno %d", data, errno)
	}
	if errno := c.do(0, cmdFlush, 0, 0, nil); errno != 0 {
		t.Errorf("flush: errno %d", errno)
	}
}

func TestDeviceErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{blockdev.ErrFenced, errShutdown},
		{fmt.Errorf("append log: %w", blockdev.ErrFenced), errShutdown},
		{blockdev.ErrReadOnly, errPerm},
		{blockdev.ErrOutOfRange, errInval},
		{blockdev.ErrNoSpace, errNoSpc},
		{blockdev.ErrClosed, errIO},
		{errors.New("disk on fire"), errIO},
	} {
		opts, d := ramExport(1<<20, false)
		srv := newTestServer(t, opts)
		c, _ := pipeConn(t, srv)
		c.connect("disk")
		for op := range nbdtest.OpFlush + 1 {
			d.InjectError(op, tc.err)
		}
		for i := range 3 { // repeated errors are counted, not re-logged
			if errno := c.do(0, cmdWrite, 0, 3, []byte("abc")); errno != tc.want {
				t.Errorf("%v: write %d errno %d, want %d", tc.err, i, errno, tc.want)
			}
		}
		if _, errno := c.pread(0, 3); errno != tc.want {
			t.Errorf("%v: read errno %d, want %d", tc.err, errno, tc.want)
		}
		for _, typ := range []uint16{cmdFlush, cmdTrim, cmdWriteZeroes} {
			if errno := c.do(0, typ, 0, 3, nil); errno != tc.want {
				t.Errorf("%v: command %d errno %d, want %d", tc.err, typ, errno, tc.want)
			}
		}
		// A failing flush after a good write fails a FUA write.
		d.InjectError(nbdtest.OpWrite, nil)
		if errno := c.do(cmdFlagFUA, cmdWrite, 0, 3, []byte("abc")); errno != tc.want {
			t.Errorf("%v: FUA write with failing flush: errno %d, want %d", tc.err, errno, tc.want)
		}
	}
}

// Many requests in flight on one connection, answered out of order, against
// a model.
func TestPipelinedRequests(t *testing.T) {
	const size = 4 << 20
	opts, d := ramExport(size, false)
	opts.MaxInFlight = 8
	opts.MaxPayload = 64 << 10
	opts.MaxBufferBytes = 128 << 10 // forces waiting for buffer budget
	srv := newTestServer(t, opts)
	rng := rand.New(rand.NewPCG(1, 2))
	// Slow some calls down so that replies reorder.
	d.SetHook(nbdtest.OpWrite, func(ctx context.Context, off, length int64) {
		if off%3 == 0 {
			time.Sleep(time.Millisecond)
		}
	})
	c, done := pipeConn(t, srv)
	c.connect("disk")

	// Phase 1: pipelined non-overlapping writes (each to its own 64 KiB block).
	const n = 64
	model := make([]byte, size)
	var wg sync.WaitGroup
	replies := make(map[uint64]uint32)
	wg.Go(func() {
		for range n {
			errno, h := c.readReply()
			replies[h] = errno
		}
	})
	for i := range n {
		off := uint64(i)*(64<<10) + uint64(rng.IntN(1000))
		l := 1 + rng.IntN(60<<10)
		p := make([]byte, l)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		copy(model[off:], p)
		c.request(0, cmdWrite, uint64(i), off, uint32(l), p)
	}
	c.request(0, cmdFlush, 1000, 0, 0, nil)
	wg.Wait()
	if errno, h := c.readReply(); errno != 0 || h != 1000 {
		t.Fatalf("flush reply handle %d errno %d", h, errno)
	}
	for i := range n {
		if errno, ok := replies[uint64(i)]; !ok || errno != 0 {
			t.Fatalf("write %d: reply %v errno %d", i, ok, errno)
		}
	}
	if !bytes.Equal(d.Bytes(), model) {
		t.Fatal("device differs from model after pipelined writes")
	}

	// Phase 2: pipelined reads of the whole disk in 64 KiB pieces.
	got := make([]byte, size)
	wg.Go(func() {
		for range size / (64 << 10) {
			errno, h := c.readReply()
			if errno != 0 {
				t.Errorf("read %d: errno %d", h, errno)
				return
			}
			copy(got[h:], c.readFull(64<<10))
		}
	})
	for off := 0; off < size; off += 64 << 10 {
		c.request(0, cmdRead, uint64(off), uint64(off), 64<<10, nil)
	}
	wg.Wait()
	if !bytes.Equal(got, model) {
		t.Fatal("pipelined reads differ from model")
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
	checkNoViolations(t, d)
}

// Shutdown lets in-flight requests finish and reply, then closes.
func TestShutdownGraceful(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	release := make(chan struct{})
	entered := make(chan struct{})
	d.SetHook(nbdtest.OpWrite, func(ctx context.Context, off, length int64) {
		close(entered)
		<-release
	})
	path := serveUnix(t, srv)
	c := dialUnix(t, path)
	c.connect("disk")
	// A second connection still in the handshake is closed at once.
	c2 := dialUnix(t, path)
	c2.readFull(18)

	c.request(0, cmdWrite, 1, 0, 3, []byte("abc"))
	<-entered
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	c2.expectClosed()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a write was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if errno, h := c.readReply(); errno != 0 || h != 1 {
		t.Fatalf("in-flight write: handle %d errno %d", h, errno)
	}
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if string(d.Bytes()[:3]) != "abc" {
		t.Error("in-flight write lost")
	}
	// New connections are refused.
	if _, err := netDialUnix(path); err == nil {
		t.Error("dial after Shutdown succeeded")
	}
}

// If Shutdown's context ends, connections are closed hard and device calls
// see a cancelled context.
func TestShutdownForced(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	entered := make(chan struct{})
	d.SetHook(nbdtest.OpRead, func(ctx context.Context, off, length int64) {
		close(entered)
		<-ctx.Done()
	})
	path := serveUnix(t, srv)
	c := dialUnix(t, path)
	c.connect("disk")
	c.request(0, cmdRead, 1, 0, 512, nil)
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want DeadlineExceeded", err)
	}
	c.expectClosed()
}

func TestRemoveExport(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)
	c := dialUnix(t, path)
	c.connect("disk")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.RemoveExport(ctx, "disk"); err != nil {
		t.Fatalf("RemoveExport: %v", err)
	}
	c.expectClosed()
	c2 := dialUnix(t, path)
	c2.greet(flagCFixedNewstyle)
	if _, typ := c2.info(optGo, "disk"); typ != repErrUnknown {
		t.Errorf("GO on removed export: %#x", typ)
	}
	if err := srv.RemoveExport(ctx, "disk"); err == nil {
		t.Error("second RemoveExport succeeded")
	}
	if err := srv.AddExport("disk", Export{Device: nbdtest.NewRAMDisk(4096, 512, false)}); err != nil {
		t.Fatalf("AddExport: %v", err)
	}
	if ei, typ := c2.info(optGo, "disk"); typ != repAck || ei.size != 4096 {
		t.Errorf("GO on re-added export: %#x size %d", typ, ei.size)
	}
}

// Reads of the hot path do not allocate per request.
func TestHandleDoesNotAllocate(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	e, _ := srv.lookup("disk")
	conn := newConn(context.Background(), srv, nopConn{})
	s := newSession(conn, e, nopConn{}, nil)
	for _, typ := range []uint16{cmdRead, cmdWrite, cmdFlush, cmdWriteZeroes} {
		req := request{Type: typ, Offset: 4096, Length: 65536}
		if typ == cmdFlush {
			req = request{Type: cmdFlush}
		}
		allocs := testing.AllocsPerRun(100, func() {
			j := job{req: req, slot: <-s.slots}
			if typ == cmdRead || typ == cmdWrite {
				j.charge = int64(classSize(int(req.Length)))
				s.budget.Acquire(context.Background(), j.charge)
				srv.acquireQueued(context.Background(), j.charge)
				j.buf = s.pool.get(int(req.Length))
			}
			s.pending.Add(1)
			s.handle(j)
		})
		if allocs > 0 {
			t.Errorf("command %d: %v allocations per request", typ, allocs)
		}
	}
}

// nopConn is a net.Conn that discards writes and reads EOF.
type nopConn struct{}

func (nopConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (nopConn) Write(p []byte) (int, error)      { return len(p), nil }
func (nopConn) Close() error                     { return nil }
func (nopConn) LocalAddr() net.Addr              { return nil }
func (nopConn) RemoteAddr() net.Addr             { return nil }
func (nopConn) SetDeadline(time.Time) error      { return nil }
func (nopConn) SetReadDeadline(time.Time) error  { return nil }
func (nopConn) SetWriteDeadline(time.Time) error { return nil }

// netDialUnix dials a unix socket.
func netDialUnix(path string) (net.Conn, error) {
	return net.DialTimeout("unix", path, time.Second)
}

// dialUnix returns a test client connected to a unix socket.
func dialUnix(t *testing.T, path string) *testClient {
	t.Helper()
	nc, err := netDialUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { nc.Close() })
	return &testClient{t: t, nc: nc}
}
