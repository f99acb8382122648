package s3server

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// RunServer starts the object-store server made by newCmd on a free
// 127.0.0.1 port (newCmd gets it), waits until http://127.0.0.1:PORT
// answers, and stops the server when t ends, logging its output if t
// failed. It retries on another port twice (a port can be taken between
// finding and binding it), then fails t. It returns the endpoint.
func RunServer(t testing.TB, name string, newCmd func(port int) *exec.Cmd) string {
	t.Helper()
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		endpoint := "http://127.0.0.1:" + strconv.Itoa(port)
		if lastErr = launch(t, name, endpoint, newCmd(port)); lastErr == nil {
			return endpoint
		}
		t.Logf("%s: attempt %d: %v", name, attempt, lastErr)
	}
	t.Fatalf("could not start %s: %v", name, lastErr)
	return ""
}

// launch starts the server cmd runs (its output collected), waits until
// endpoint answers and stops it when t ends, logging its output if t
// failed. If it does not answer, launch stops it and the error holds its
// output.
func launch(t testing.TB, name, endpoint string, cmd *exec.Cmd) error {
	var out lockedbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Kill the server if the test binary dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A server that leaves a child holding its output (a node wrapper)
	// must not hold Wait for ever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		// A test may have stopped it (SIGSTOP, a stalled store): let it
		// run again so that it can exit.
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	if err := WaitReady(name, endpoint, exited); err != nil {
		stop()
		return fmt.Errorf("%w; output:\n%s", err, out.String())
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return nil
}

// BucketNames hands out the names of the buckets (or containers) a test
// server creates: urldisk-test-1, urldisk-test-2, ... Safe for concurrent
// use; the zero value is ready.
type BucketNames struct{ n atomic.Int64 }

// Next returns a name not handed out before.
func (b *BucketNames) Next() string { return fmt.Sprintf("urldisk-test-%d", b.n.Add(1)) }
