package nbd

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(testTimeout); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestMaxConnsRefusesExtra: connections over MaxConns are closed at once
// (no greeting), while a connected client's FLUSH is still answered
// promptly; once a connection closes, a new one is served again.
func TestMaxConnsRefusesExtra(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	opts.MaxConns = 3
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)

	good := dialUnix(t, path)
	good.connect("disk")
	var idle []*testClient
	for range 2 {
		c := dialUnix(t, path)
		c.readFull(18) // greeting, then nothing: an idle handshake
		idle = append(idle, c)
	}
	waitFor(t, "3 open connections", func() bool { return srv.Stats().Conns == 3 })

	const extra = 5
	for i := range extra {
		c := dialUnix(t, path)
		var b [18]byte
		if n, err := io.ReadFull(c.nc, b[:]); err == nil {
			t.Fatalf("connection %d over MaxConns got a greeting", i)
		} else if n != 0 {
			t.Fatalf("connection %d over MaxConns: %d bytes then %v", i, n, err)
		}
	}
	if got := srv.Stats().RefusedConns; got != extra {
		t.Errorf("RefusedConns = %d, want %d", got, extra)
	}

	start := time.Now()
	if errno := good.do(0, cmdFlush, 0, 0, nil); errno != 0 {
		t.Fatalf("FLUSH while at the connection limit: errno %d", errno)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("FLUSH at the connection limit took %v", d)
	}

	idle[0].nc.Close()
	waitFor(t, "the closed connection to be released", func() bool { return srv.Stats().Conns == 2 })
	c := dialUnix(t, path)
	c.connect("disk")
	if _, errno := c.pread(0, 4096); errno != 0 {
		t.Errorf("read on a connection accepted after one closed: errno %d", errno)
	}
}

// TestHandshakeTimeoutOverSocket: a client that connects and never
// finishes the handshake is closed after HandshakeTimeout, which frees its
// place under MaxConns.
func TestHandshakeTimeoutOverSocket(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	opts.MaxConns = 1
	opts.HandshakeTimeout = 300 * time.Millisecond
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)

	start := time.Now() // before the dial: the server's deadline starts at accept, after it
	c := dialUnix(t, path)
	c.readFull(18)
	c.expectClosed()
	if d := time.Since(start); d < opts.HandshakeTimeout {
		t.Errorf("closed after %v, before the %v handshake timeout", d, opts.HandshakeTimeout)
	}
	waitFor(t, "the timed-out connection to be released", func() bool { return srv.Stats().Conns == 0 })
	c2 := dialUnix(t, path)
	c2.connect("disk")
}

// TestQueuedBytesBoundedForNonReadingClients: clients that send READs but
// never read the replies hold payload buffers; together they never hold
// more than MaxQueuedBytes (each alone could hold MaxBufferBytes), another
// client's FLUSH is answered meanwhile, and after ReplyTimeout they are
// disconnected and every buffer is released.
func TestQueuedBytesBoundedForNonReadingClients(t *testing.T) {
	const mib = 1 << 20
	opts, _ := ramExport(8*mib, false)
	opts.MaxPayload = mib
	opts.MaxBufferBytes = 2 * mib
	opts.MaxQueuedBytes = 3 * mib
	opts.ReplyTimeout = 2 * time.Second
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)

	good := dialUnix(t, path)
	good.connect("disk")

	const stalled, reads = 4, 32
	for i := range stalled {
		c := dialUnix(t, path)
		c.connect("disk")
		var b []byte
		for j := range reads {
			b = append(b, requestBytes(0, cmdRead, uint64(i*reads+j), uint64(j%8)*mib, mib)...)
		}
		c.write(b) // and never read a reply
	}

	// The stalled clients saturate the bound, and never pass it.
	var peak int64
	sample := func() bool {
		st := srv.Stats()
		peak = max(peak, st.QueuedBytes)
		if st.QueuedBytes > st.MaxQueuedBytes {
			t.Fatalf("QueuedBytes %d above MaxQueuedBytes %d", st.QueuedBytes, st.MaxQueuedBytes)
		}
		return st.QueuedBytes == opts.MaxQueuedBytes
	}
	waitFor(t, "the stalled clients to reach MaxQueuedBytes", sample)

	// A FLUSH needs no buffer: it is answered while the bound is reached.
	start := time.Now()
	if errno := good.do(0, cmdFlush, 0, 0, nil); errno != 0 {
		t.Fatalf("FLUSH with the buffer bound reached: errno %d", errno)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("FLUSH with the buffer bound reached took %v", d)
	}
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		sample()
	}
	if peak > opts.MaxQueuedBytes {
		t.Errorf("peak QueuedBytes %d above the bound %d", peak, opts.MaxQueuedBytes)
	}

	// ReplyTimeout disconnects the stalled clients and releases it all.
	waitFor(t, "the stalled clients to be disconnected", func() bool {
		st := srv.Stats()
		return st.Conns == 1 && st.QueuedBytes == 0
	})
	if data, errno := good.pread(mib, mib); errno != 0 || len(data) != mib {
		t.Errorf("read after the stalled clients left: errno %d, %d bytes", errno, len(data))
	}
}

// fenceableDevice fails flushes with blockdev.ErrFenced once fenced, as
// a volume does after another writer took it over.
type fenceableDevice struct {
	blockdev.Device
	fenced atomic.Bool
}

func (d *fenceableDevice) fence() { d.fenced.Store(true) }

func (d *fenceableDevice) Flush(ctx context.Context) error {
	if d.fenced.Load() {
		return fmt.Errorf("append log: %w", blockdev.ErrFenced)
	}
	return d.Device.Flush(ctx)
}

// TestFencedExportRefusesNewClients: after a device call fails with
// ErrFenced, OnFenced reports the export once and new clients get
// NBD_REP_ERR_SHUTDOWN for it (and a closed connection for
// NBD_OPT_EXPORT_NAME), while other exports are still served.
func TestFencedExportRefusesNewClients(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	disk := opts.Exports["disk"].Device
	fd := &fenceableDevice{Device: disk}
	opts.Exports["disk"] = Export{Device: fd}
	opts.Exports["other"] = Export{Device: disk}
	reported := make(chan string, 4)
	opts.OnFenced = func(name string) { reported <- name }
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)

	c := dialUnix(t, path)
	c.connect("disk")
	if errno := c.do(0, cmdWrite, 0, 5, []byte("hello")); errno != 0 {
		t.Fatalf("write before the fence: errno %d", errno)
	}
	fd.fence()
	if errno := c.do(0, cmdFlush, 0, 0, nil); errno != errShutdown {
		t.Fatalf("FLUSH after the fence: errno %d, want ESHUTDOWN", errno)
	}
	if errno := c.do(0, cmdFlush, 0, 0, nil); errno != errShutdown {
		t.Fatalf("second FLUSH after the fence: errno %d, want ESHUTDOWN", errno)
	}
	select {
	case name := <-reported:
		if name != "disk" {
			t.Errorf("OnFenced(%q), want disk", name)
		}
	case <-time.After(testTimeout):
		t.Fatal("OnFenced not called")
	}

	for _, opt := range []uint32{optGo, optInfo} {
		n := dialUnix(t, path)
		n.greet(flagCFixedNewstyle | flagCNoZeroes)
		n.sendOption(opt, infoData("disk"))
		r := n.readOptReply()
		if r.typ != repErrShutdown || !strings.Contains(string(r.data), "fenced") {
			t.Errorf("option %d for a fenced export: reply %#x %q, want NBD_REP_ERR_SHUTDOWN saying fenced", opt, r.typ, r.data)
		}
	}
	n := dialUnix(t, path)
	n.greet(flagCFixedNewstyle | flagCNoZeroes)
	n.sendOption(optExportName, []byte("disk"))
	n.expectClosed()

	o := dialUnix(t, path)
	o.connect("other")
	if _, errno := o.pread(0, 5); errno != 0 {
		t.Errorf("read on an export that was not fenced: errno %d", errno)
	}
	select {
	case name := <-reported:
		t.Errorf("OnFenced called again (%q)", name)
	default:
	}
}

func TestFitMaxConns(t *testing.T) {
	for _, c := range []struct {
		want    int
		limit   uint64
		reserve int
		out     int
	}{
		{1024, 1 << 20, 256, 1024}, // plenty of descriptors
		{1024, 1024, 256, 768},     // the reserve comes off the limit
		{3, 1024, 256, 3},          // a smaller request stands
		{1024, 100, 256, 8},        // a tiny limit still serves a few
		{1024, 0, 256, 1024},       // unknown limit
	} {
		if got := FitMaxConns(c.want, c.limit, c.reserve); got != c.out {
			t.Errorf("FitMaxConns(%d, %d, %d) = %d, want %d", c.want, c.limit, c.reserve, got, c.out)
		}
	}
}

// TestBudgetSharedAcrossServers: two servers drawing from one Budget (an
// agent's machines) hold no more than it together, although each alone
// would be allowed MaxBufferBytes per connection and the budget in full.
func TestBudgetSharedAcrossServers(t *testing.T) {
	const mib = 1 << 20
	budget := NewBudget(3 * mib)
	var srvs []*Server
	for range 2 {
		opts, _ := ramExport(8*mib, false)
		opts.MaxPayload = mib
		opts.MaxBufferBytes = 2 * mib
		opts.Budget = budget
		opts.ReplyTimeout = 2 * time.Second
		srv := newTestServer(t, opts)
		srvs = append(srvs, srv)
		path := serveUnix(t, srv)
		for i := range 2 {
			c := dialUnix(t, path)
			c.connect("disk")
			var b []byte
			for j := range 16 {
				b = append(b, requestBytes(0, cmdRead, uint64(i*16+j), uint64(j%8)*mib, mib)...)
			}
			c.write(b) // and never read a reply
		}
	}
	var peak int64
	waitFor(t, "the stalled clients of both servers to reach the shared budget", func() bool {
		for _, srv := range srvs {
			st := srv.Stats()
			if st.MaxQueuedBytes != 3*mib {
				t.Fatalf("MaxQueuedBytes %d, want the budget's %d", st.MaxQueuedBytes, 3*mib)
			}
			if st.QueuedBytes > st.MaxQueuedBytes {
				t.Fatalf("QueuedBytes %d above the shared budget %d", st.QueuedBytes, st.MaxQueuedBytes)
			}
		}
		peak = max(peak, budget.Used())
		return budget.Used() == 3*mib
	})
	waitFor(t, "the stalled clients to be disconnected and the budget released", func() bool {
		return budget.Used() == 0
	})
	if peak > 3*mib {
		t.Errorf("peak %d above the shared budget", peak)
	}
}
