package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

const (
	// readyTimeout bounds serve's start-up (attach, replay, listen).
	readyTimeout = time.Minute
	// stopTimeout bounds serve's exit after SIGTERM: its own --stop-timeout
	// (1 minute) plus slack.
	stopTimeout = 90 * time.Second
)

// server is a running `urldisk serve` subprocess.
type server struct {
	t        testing.TB
	args     []string
	cmd      *exec.Cmd
	Socket   string            // the unix socket it listens on
	CacheDir string            // its --cache directory ("" if the caller chose)
	URIs     map[string]string // export name -> URI, from "serving NAME at URI"
	Names    []string          // export names in printed order

	stdout, stderr lockedbuf.Buffer

	mu     sync.Mutex
	ready  chan struct{} // closed on the "ready" line
	isRdy  bool          // guarded by mu
	exited chan struct{} // closed when the process has been waited for
	code   int           // exit code, valid after exited; -1 if killed
	// expectFailure: the test asserts serve's exit code itself.
	expectFailure bool
	stopped       bool // Stop was called
}

// host is what serve processes on one machine share: $XDG_RUNTIME_DIR,
// where serve keeps the control sockets of the volumes it holds
// read-write. Serves started on different hosts do not see each other's.
type host struct{ runtimeDir string }

// newHost returns a host with a runtime directory of its own.
func newHost(t testing.TB) *host {
	t.Helper()
	// Unix socket paths are limited to 108 bytes: keep them short rather
	// than under t.TempDir, whose name includes the test's.
	dir, err := os.MkdirTemp("", "ude2e-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &host{runtimeDir: dir}
}

// startServe starts `urldisk serve --listen unix:SOCK --cache DIR
// --cache-size 256M ARGS...` as if on a host of its own: with a socket, a
// cache directory and a $XDG_RUNTIME_DIR of its own. It waits for "ready"
// and parses the "serving NAME at URI" lines. When t ends the server is
// sent SIGTERM and must exit 0 (unless the test stopped it itself); its
// stderr is logged if t failed.
func startServe(t testing.TB, args ...string) *server {
	t.Helper()
	return startServeOn(t, newHost(t), args...)
}

// startServeOn is startServe on host h (sharing its runtime directory with
// other serves on h).
func startServeOn(t testing.TB, h *host, args ...string) *server {
	t.Helper()
	s := launchServe(t, h, args...)
	s.waitReady()
	return s
}

// launchServe starts serve on h without waiting for it to be ready.
func launchServe(t testing.TB, h *host, args ...string) *server {
	t.Helper()
	return launchServeUnder(t, h, nil, args...)
}

// launchServeUnder is launchServe with serve started through the command
// prefix wrapper (e.g. prlimit with its options), which must exec serve
// in its own place so that the process signalled and waited for is serve.
func launchServeUnder(t testing.TB, h *host, wrapper []string, args ...string) *server {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "ude2e-")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{
		t:      t,
		Socket: filepath.Join(sockDir, "nbd.sock"),
		URIs:   map[string]string{},
		ready:  make(chan struct{}),
		exited: make(chan struct{}),
		code:   -1,
	}
	full := []string{"serve", "--listen", "unix:" + s.Socket}
	if !slices.Contains(args, "--cache") && !slices.Contains(args, "--no-cache") {
		s.CacheDir = filepath.Join(t.TempDir(), "cache")
		full = append(full, "--cache", s.CacheDir, "--cache-size", "256M")
	}
	s.args = append(full, args...)
	argv := append(append(slices.Clone(wrapper), urldiskBin), s.args...)
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Dir = t.TempDir()
	s.cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+h.runtimeDir)
	s.cmd.Stdout = &lineWriter{fn: s.onStdoutLine}
	s.cmd.Stderr = &s.stderr
	// Kill serve if the test binary dies without cleaning up.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		t.Fatalf("start urldisk serve: %v", err)
	}
	go func() {
		err := s.cmd.Wait()
		if s.cmd.ProcessState != nil {
			s.code = s.cmd.ProcessState.ExitCode()
		}
		if err != nil && s.cmd.ProcessState == nil {
			s.stderr.Write([]byte(fmt.Sprintf("\n[e2e: wait: %v]\n", err)))
		}
		close(s.exited)
	}()
	t.Cleanup(func() {
		if !s.isStopped() {
			code := s.Stop()
			if code != 0 && !s.expectFailure {
				t.Errorf("urldisk serve exited %d after SIGTERM at the end of the test, want 0", code)
			}
		}
		if t.Failed() {
			t.Logf("urldisk %s\nstdout:\n%s\nstderr:\n%s", strings.Join(s.args, " "), s.stdout.String(), s.stderr.String())
		}
		os.RemoveAll(sockDir)
	})
	return s
}

func (s *server) onStdoutLine(line string) {
	s.stdout.Write([]byte(line + "\n"))
	s.mu.Lock()
	defer s.mu.Unlock()
	if line == "ready" {
		if !s.isRdy {
			s.isRdy = true
			close(s.ready)
		}
		return
	}
	if rest, ok := strings.CutPrefix(line, "serving "); ok {
		if name, uri, ok := strings.Cut(rest, " at "); ok {
			s.URIs[name] = uri
			s.Names = append(s.Names, name)
		}
	}
}

// waitReady waits for the "ready" line; it fails t if serve exits first.
func (s *server) waitReady() {
	s.t.Helper()
	select {
	case <-s.ready:
	case <-s.exited:
		s.t.Fatalf("urldisk serve exited with code %d before printing ready\nargs: %v\nstdout:\n%s\nstderr:\n%s",
			s.code, s.args, s.stdout.String(), s.stderr.String())
	case <-time.After(readyTimeout):
		s.t.Fatalf("urldisk serve not ready after %v\nstderr:\n%s", readyTimeout, s.stderr.String())
	}
}

// URI returns the printed URI of export name.
func (s *server) URI(name string) string {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.URIs[name]
	if !ok {
		s.t.Fatalf("serve printed no URI for %q (it printed %v)", name, s.URIs)
	}
	return u
}

// Stderr returns what serve has logged so far.
func (s *server) Stderr() string { return s.stderr.String() }

// StderrHas reports whether serve's stderr contains substr, waiting up to
// 10 s for it: the log reaches the buffer through a pipe and a copying
// goroutine, so a line serve wrote before answering a client may not be
// there yet when the client returns.
func (s *server) StderrHas(substr string) bool {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if strings.Contains(s.Stderr(), substr) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (s *server) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// Signal sends sig to serve without waiting.
func (s *server) Signal(sig os.Signal) {
	if err := s.cmd.Process.Signal(sig); err != nil {
		// A serve that exited on its own (e.g. fenced) may not have been
		// reaped yet: ErrProcessDone comes before exited is closed.
		wait := time.After(0)
		if errors.Is(err, os.ErrProcessDone) {
			wait = time.After(10 * time.Second)
		}
		select {
		case <-s.exited:
		case <-wait:
			s.t.Errorf("signal serve: %v", err)
		}
	}
}

// Stop sends SIGTERM, waits for serve to exit and returns its exit code.
// If it does not exit within stopTimeout it is killed, t fails and -1 is
// returned. Stop may be called more than once.
func (s *server) Stop() int {
	s.t.Helper()
	s.Terminate()
	return s.Wait(stopTimeout)
}

// Terminate sends SIGTERM without waiting; the test then waits with Wait
// and judges the exit code itself.
func (s *server) Terminate() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.Signal(syscall.SIGTERM)
}

// Wait waits up to d for serve to exit (killing it after that) and
// returns its exit code.
func (s *server) Wait(d time.Duration) int {
	s.t.Helper()
	select {
	case <-s.exited:
		return s.code
	case <-time.After(d):
	}
	s.t.Errorf("urldisk serve did not exit within %v; killing it", d)
	_ = s.cmd.Process.Kill()
	<-s.exited
	return -1
}

// StopOK stops serve with SIGTERM and fails t unless it exits 0 after
// logging a clean stop.
func (s *server) StopOK() {
	s.t.Helper()
	if code := s.Stop(); code != 0 {
		s.t.Fatalf("urldisk serve exited %d after SIGTERM, want 0\nstderr:\n%s", code, s.Stderr())
	}
	if !strings.Contains(s.Stderr(), "stopped cleanly") {
		s.t.Errorf("serve exited 0 but did not log a clean stop:\n%s", s.Stderr())
	}
}

// StopAndDropCache stops serve (exit 0 required) and deletes its cache
// directory, so that the next serve reads everything from the store, as a
// different host would.
func (s *server) StopAndDropCache() {
	s.t.Helper()
	s.StopOK()
	if s.CacheDir == "" {
		s.t.Fatal("StopAndDropCache: the caller chose the cache directory")
	}
	if err := os.RemoveAll(s.CacheDir); err != nil {
		s.t.Fatal(err)
	}
}
