// Inline execution needs the socket send queue size (TIOCOUTQ): Linux only,
// hence the file name.

package nbd

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

// inlineBlocker observes the reads of a RAM disk while watching: it
// reports for each whether it runs inline on the reader goroutine, and
// blocks the first inline one until released.
type inlineBlocker struct {
	watching atomic.Bool
	calls    chan bool // whether each watched read runs inline
	release  chan struct{}
}

func newInlineBlocker(t *testing.T, d *nbdtest.RAMDisk) *inlineBlocker {
	b := &inlineBlocker{calls: make(chan bool)}
	d.SetHook(nbdtest.OpRead, func(ctx context.Context, off, length int64) {
		if !b.watching.Load() {
			return
		}
		inline := runsInline()
		b.calls <- inline
		if inline {
			b.watching.Store(false)
			select {
			case <-b.release:
			case <-ctx.Done():
			}
		}
	})
	t.Cleanup(func() {
		if b.release != nil {
			select {
			case <-b.release:
			default:
				close(b.release)
			}
		}
	})
	return b
}

// runsInline reports whether the caller runs inline on a reader goroutine.
func runsInline() bool {
	buf := make([]byte, 64<<10)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), "(*session).handleInline")
}

// blockInline sends reads at queue depth 1 until one runs inline, which
// then stays blocked until unblock. It returns how many reads were
// answered before.
func (b *inlineBlocker) blockInline(c *testClient, handle uint64) int {
	c.t.Helper()
	b.release = make(chan struct{})
	b.watching.Store(true)
	limit := 4 * (inlineStreak + inlineCooldown)
	for i := range limit {
		c.request(0, cmdRead, handle, uint64(i%16)*4096, 4096, nil)
		if <-b.calls {
			return i
		}
		if errno, h := c.readReply(); errno != 0 || h != handle {
			c.t.Fatalf("read %d: handle %d errno %d", i, h, errno)
		}
		c.readFull(4096)
	}
	c.t.Fatalf("none of %d reads at queue depth 1 was executed inline", limit)
	return 0
}

func (b *inlineBlocker) unblock() { close(b.release) }

// A client at queue depth 1 is served inline; when an inline device call
// blocks, the watchdog hands the reader role to another goroutine so that
// later requests are still served; after the cooldown inline execution
// resumes, and a second takeover works too.
func TestInlineTakeover(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	want := bytes.Repeat([]byte("0123456789abcdef"), 256)
	d.SetBytes(8192, want)
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)
	b := newInlineBlocker(t, d) // after serveUnix: its cleanup runs before Shutdown
	c := dialUnix(t, path)
	c.connect("disk")

	for round := range 3 {
		n := b.blockInline(c, 100)
		if n < inlineStreak-1 {
			t.Errorf("round %d: inline after %d requests, want at least %d", round, n, inlineStreak)
		}
		if round > 0 && n < inlineCooldown {
			t.Errorf("round %d: inline after %d requests, before the cooldown of %d", round, n, inlineCooldown)
		}
		// The blocked call holds the reader; the watchdog must take over.
		start := time.Now()
		if got, errno := c.pread(8192, 4096); errno != 0 || !bytes.Equal(got, want) {
			t.Fatalf("round %d: read during blocked inline call: errno %d", round, errno)
		}
		t.Logf("round %d: inline after %d requests; served a request %v after it blocked", round, n, time.Since(start))
		c.request(0, cmdWrite, 101, 4096, 3, []byte("xyz"))
		c.request(0, cmdFlush, 102, 0, 0, nil)
		for _, wantH := range []uint64{101, 102} {
			if errno, h := c.readReply(); errno != 0 || h != wantH {
				t.Fatalf("round %d: reply handle %d errno %d, want %d", round, h, errno, wantH)
			}
		}
		b.unblock()
		if errno, h := c.readReply(); errno != 0 || h != 100 {
			t.Fatalf("round %d: blocked read: handle %d errno %d", round, h, errno)
		}
		c.readFull(4096)
	}
	if got, _ := c.pread(8192, 4096); !bytes.Equal(got, want) {
		t.Error("data read back differs")
	}
	c.disconnect()
	c.expectClosed()
	checkNoViolations(t, d)
}

// A client that disconnects while an inline call is blocked (and the reader
// role was taken over) is cleaned up once the call returns; Shutdown answers
// the blocked request first.
func TestInlineTakeoverShutdown(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)
	b := newInlineBlocker(t, d) // after serveUnix: its cleanup runs before Shutdown
	c := dialUnix(t, path)
	c.connect("disk")
	b.blockInline(c, 100)
	time.Sleep(5 * inlineWatchPeriod) // let the watchdog take over
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a read was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.unblock()
	if errno, h := c.readReply(); errno != 0 || h != 100 {
		t.Fatalf("blocked read: handle %d errno %d", h, errno)
	}
	c.readFull(4096)
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// Pipelining clients stay on the worker path: requests sent before the
// replies to earlier ones are read are not executed inline, even when each
// finds the server idle.
func TestPipelinedNotInline(t *testing.T) {
	opts, d := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	var inline atomic.Int64
	d.SetHook(nbdtest.OpRead, func(ctx context.Context, off, length int64) {
		if runsInline() {
			inline.Add(1)
		}
	})
	path := serveUnix(t, srv)
	c := dialUnix(t, path)
	c.connect("disk")
	const depth, rounds = 8, 20
	for range rounds {
		for i := range depth {
			c.request(0, cmdRead, uint64(i), uint64(i)*4096, 4096, nil)
			time.Sleep(200 * time.Microsecond) // the server finishes it meanwhile
		}
		for range depth {
			if errno, _ := c.readReply(); errno != 0 {
				t.Fatalf("errno %d", errno)
			}
			c.readFull(4096)
		}
	}
	// The first request of a round finds every reply read.
	if n := inline.Load(); n > rounds {
		t.Errorf("%d of %d pipelined reads executed inline", n, depth*rounds)
	}
	c.disconnect()
	c.expectClosed()
}
