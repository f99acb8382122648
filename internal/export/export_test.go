package export

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
	"github.com/urldisk/urldisk/internal/volume"
)

const volSize = 4 << 20

// testPool creates a mem:// pool with one volume named name.
func testPool(t *testing.T, name string) *volume.Pool {
	t.Helper()
	ctx := context.Background()
	s, err := objstore.Open(ctx, "mem://"+name)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	p, err := volume.InitPool(ctx, s, volume.PoolOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("init pool: %v", err)
	}
	if _, err := p.Create(ctx, name, volume.CreateOptions{Size: volSize}); err != nil {
		t.Fatalf("create volume: %v", err)
	}
	return p
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// opener attaches volume name of p read-write (or read-only).
func opener(p *volume.Pool, name string, readOnly bool, log *slog.Logger) func(context.Context) (*volume.Volume, error) {
	return func(ctx context.Context) (*volume.Volume, error) {
		return p.Open(ctx, name, volume.Options{ReadOnly: readOnly, Logger: log})
	}
}

// testEnv gives the control sockets a private runtime directory and
// returns a unix NBD listener in it.
func testEnv(t *testing.T) net.Listener {
	t.Helper()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	ln, err := nbd.Listen("unix:" + filepath.Join(t.TempDir(), "nbd.sock"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

func dial(t *testing.T, e *Export, name string) *nbdclient.Conn {
	t.Helper()
	uri, err := e.URI(name)
	if err != nil {
		t.Fatalf("URI %s: %v", name, err)
	}
	c, err := nbdclient.Dial(uri, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", uri, err)
	}
	return c
}

// Two volumes on one server: each reads back its own writes, each has a
// control socket while served; Shutdown flushes the writes no client
// flushed (they are in the store after a fresh attach) and removes the
// control sockets.
func TestTwoVolumesServedAndShutdownFlushes(t *testing.T) {
	ctx := context.Background()
	log := testLogger(t)
	ln := testEnv(t)
	pa, pb := testPool(t, "alpha"), testPool(t, "beta")
	e, err := Start(ctx, Config{
		Volumes: []Volume{
			{Name: "alpha", Open: opener(pa, "alpha", false, log)},
			{Name: "beta", Open: opener(pb, "beta", false, log)},
		},
		Listener: ln,
		Logger:   log,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := e.Names(); len(got) != 2 || got[0] != "alpha" || got[1] != "beta" {
		t.Fatalf("Names = %v, want [alpha beta]", got)
	}
	want := map[string][]byte{"alpha": bytes.Repeat([]byte("A"), 8192), "beta": bytes.Repeat([]byte("b"), 8192)}
	for name, data := range want {
		if err := control.InUse(e.Volume(name).Desc().ID); err == nil {
			t.Errorf("%s: no control socket answers while it is served read-write", name)
		}
		c := dial(t, e, name)
		if c.Size() != volSize {
			t.Errorf("%s: size %d, want %d", name, c.Size(), volSize)
		}
		if err := c.WriteAt(data, 4096); err != nil {
			t.Fatalf("%s: write: %v", name, err)
		}
		got := make([]byte, len(data))
		if err := c.ReadAt(got, 4096); err != nil {
			t.Fatalf("%s: read: %v", name, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %q..., want %q...", name, got[:8], data[:8])
		}
		c.Close() // no FLUSH: Shutdown's final flush must make the write durable
	}
	ids := map[string]string{"alpha": e.Volume("alpha").Desc().ID, "beta": e.Volume("beta").Desc().ID}
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for name, p := range map[string]*volume.Pool{"alpha": pa, "beta": pb} {
		if err := control.InUse(ids[name]); err != nil {
			t.Errorf("%s: control socket still answers after Shutdown: %v", name, err)
		}
		v, err := p.Open(ctx, name, volume.Options{ReadOnly: true, Logger: log})
		if err != nil {
			t.Fatalf("reattach %s: %v", name, err)
		}
		got := make([]byte, len(want[name]))
		if err := v.ReadAt(ctx, got, 4096); err != nil {
			t.Fatalf("%s: read after reattach: %v", name, err)
		}
		if !bytes.Equal(got, want[name]) {
			t.Errorf("%s: after Shutdown and reattach read %q..., want %q...: the final flush lost the write", name, got[:8], want[name][:8])
		}
		v.Close(ctx)
	}
	if _, err := nbdclient.Dial("nbd+unix:///alpha?socket="+ln.Addr().String(), 2*time.Second); err == nil {
		t.Errorf("a client could still connect after Shutdown")
	}
}

// A volume fenced by another writer is reported on Fenced, whether a
// client's request found out or only a write of the holder's own (the
// periodic check); new clients are refused the export, and Shutdown
// returns the fenced close as an error.
func TestFencedReported(t *testing.T) {
	for _, viaClient := range []bool{true, false} {
		name := map[bool]string{true: "by-request", false: "by-poll"}[viaClient]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			log := testLogger(t)
			ln := testEnv(t)
			p := testPool(t, "vol")
			e, err := Start(ctx, Config{
				Volumes:   []Volume{{Name: "vol", Open: opener(p, "vol", false, log)}},
				Listener:  ln,
				FencePoll: 20 * time.Millisecond,
				Logger:    log,
			})
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			c := dial(t, e, "vol")
			defer c.Close()
			if err := c.WriteAt([]byte("before"), 0); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			select {
			case <-e.Fenced():
				t.Fatalf("Fenced closed before anyone took the volume over")
			default:
			}
			// Another writer takes the volume over.
			other, err := p.Open(ctx, "vol", volume.Options{Logger: log})
			if err != nil {
				t.Fatalf("second writer: %v", err)
			}
			defer other.Close(ctx)
			if viaClient {
				err := c.WriteAt([]byte("after"), 0)
				if err == nil {
					err = c.Flush()
				}
				if err == nil {
					t.Fatalf("write and flush after the takeover succeeded")
				}
			} else {
				// The holder learns from its own upload; no NBD request
				// fails, so only the periodic check can report it.
				v := e.Volume("vol")
				err := v.WriteAt(ctx, []byte("after"), 0)
				if err == nil {
					err = v.Flush(ctx)
				}
				if !errors.Is(err, blockdev.ErrFenced) {
					t.Fatalf("direct write and flush after the takeover: %v, want ErrFenced", err)
				}
			}
			select {
			case <-e.Fenced():
			case <-time.After(10 * time.Second):
				t.Fatalf("Fenced not closed 10 s after the volume was fenced")
			}
			if c2, err := nbdclient.Dial("nbd+unix:///vol?socket="+ln.Addr().String(), 5*time.Second); err == nil {
				c2.Close()
				t.Errorf("a new client was given the fenced export")
			}
			err = e.Shutdown(ctx)
			if !errors.Is(err, blockdev.ErrFenced) {
				t.Fatalf("Shutdown = %v, want an error wrapping ErrFenced", err)
			}
			if again := e.Shutdown(ctx); !errors.Is(again, blockdev.ErrFenced) {
				t.Errorf("second Shutdown = %v, want the first one's result", again)
			}
		})
	}
}

// A read-only export has no control socket and is never reported fenced.
func TestReadOnlyNoControlNoFence(t *testing.T) {
	ctx := context.Background()
	log := testLogger(t)
	ln := testEnv(t)
	p := testPool(t, "ro")
	e, err := Start(ctx, Config{Volumes: []Volume{{Name: "ro", Open: opener(p, "ro", true, log)}}, Listener: ln, FencePoll: 10 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := control.InUse(e.Volume("ro").Desc().ID); err != nil {
		t.Errorf("a read-only export has a control socket: %v", err)
	}
	c := dial(t, e, "ro")
	if err := c.WriteAt([]byte("x"), 0); err == nil {
		t.Errorf("write to a read-only export succeeded")
	}
	c.Close()
	select {
	case <-e.Fenced():
		t.Errorf("Fenced closed for an export without read-write volumes")
	case <-time.After(100 * time.Millisecond): // ten polls
	}
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// Start refuses a bad Config before attaching anything, and undoes what it
// attached when a later volume fails: the earlier volume is closed (its
// control socket gone) and the listener too.
func TestStartFailureUndoes(t *testing.T) {
	ctx := context.Background()
	log := testLogger(t)

	t.Run("duplicate names", func(t *testing.T) {
		ln := testEnv(t)
		opened := false
		open := func(context.Context) (*volume.Volume, error) { opened = true; return nil, errors.New("unreachable") }
		_, err := Start(ctx, Config{Volumes: []Volume{{Name: "x", Open: open}, {Name: "x", Open: open}}, Listener: ln, Logger: log})
		if err == nil {
			t.Fatalf("Start with two volumes named x succeeded")
		}
		if opened {
			t.Errorf("Start attached a volume before refusing the duplicate name")
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("listener not closed after the failed Start: Accept = %v", err)
		}
	})

	t.Run("second attach fails", func(t *testing.T) {
		ln := testEnv(t)
		p := testPool(t, "first")
		var first *volume.Volume
		openFirst := func(ctx context.Context) (*volume.Volume, error) {
			v, err := opener(p, "first", false, log)(ctx)
			first = v
			return v, err
		}
		boom := errors.New("attach failed")
		_, err := Start(ctx, Config{Volumes: []Volume{
			{Name: "first", Open: openFirst},
			{Name: "second", Open: func(context.Context) (*volume.Volume, error) { return nil, boom }},
		}, Listener: ln, Logger: log})
		if !errors.Is(err, boom) {
			t.Fatalf("Start = %v, want the second attach's error", err)
		}
		if first == nil {
			t.Fatalf("the first volume was never attached")
		}
		if err := first.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, blockdev.ErrClosed) {
			t.Errorf("first volume still open after the failed Start: read = %v", err)
		}
		if err := control.InUse(first.Desc().ID); err != nil {
			t.Errorf("first volume's control socket still answers: %v", err)
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("listener not closed after the failed Start: Accept = %v", err)
		}
	})
}

// Shutdown cuts a client that does not let go within DrainTimeout and
// says so in its error, and still flushes and closes the volume.
func TestShutdownDrainTimeoutReported(t *testing.T) {
	ctx := context.Background()
	log := testLogger(t)
	ln := testEnv(t)
	p := testPool(t, "slow")
	gate := make(chan struct{})
	e, err := Start(ctx, Config{
		Volumes: []Volume{{Name: "slow", Open: opener(p, "slow", false, log),
			Device: func(v *volume.Volume) blockdev.Device { return stuckReads{v, gate} }}},
		Listener:     ln,
		DrainTimeout: 200 * time.Millisecond,
		Logger:       log,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	c := dial(t, e, "slow")
	defer c.Close()
	if err := c.WriteAt([]byte("kept"), 0); err != nil {
		t.Fatalf("write: %v", err)
	}
	readDone := make(chan error, 1)
	go func() { readDone <- c.ReadAt(make([]byte, 512), 0) }()
	// Wait until the read is stuck in the device.
	select {
	case gate <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatalf("the read never reached the device")
	}
	err = e.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the drain's deadline error", err)
	}
	select {
	case <-readDone:
	case <-time.After(10 * time.Second):
		t.Fatalf("the stuck client was not cut")
	}
	v, err := p.Open(ctx, "slow", volume.Options{ReadOnly: true, Logger: log})
	if err != nil {
		t.Fatalf("reattach: %v", err)
	}
	defer v.Close(ctx)
	got := make([]byte, 4)
	if err := v.ReadAt(ctx, got, 0); err != nil || string(got) != "kept" {
		t.Errorf("after Shutdown read %q, %v; want \"kept\": the volume was not flushed after a cut drain", got, err)
	}
}

// stuckReads blocks every read until its context ends, after announcing
// it on gate.
type stuckReads struct {
	*volume.Volume
	gate chan struct{}
}

func (s stuckReads) ReadAt(ctx context.Context, p []byte, off int64) error {
	<-s.gate
	<-ctx.Done()
	return ctx.Err()
}
