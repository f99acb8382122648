package e2e

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// nbdEIO is the NBD error value of EIO.
const nbdEIO = 5

// TestStalledStoreFlushEIO stops a real S3 server (versitygw, SIGSTOP: it
// accepts connections and never answers) under a real `urldisk serve`
// with --store-timeout 2s --flush-timeout 6s. A FLUSH of a write made
// meanwhile must fail with EIO after about 6 s (not hang), serve must log
// a WARN naming the stalled upload within seconds, and once the server
// runs again (SIGCONT) a second FLUSH succeeds and every write, the one
// whose flush failed included, reads back, also from a new serve with an
// empty cache: nothing acknowledged or queued is lost.
func TestStalledStoreFlushEIO(t *testing.T) {
	srv := s3server.Start(t) // sets the AWS environment serve inherits
	vol := volURL(srv.URL, "stall")
	const flushTimeout = 6 * time.Second
	s := startServe(t, vol, "--create", "--size", "16M", "--store-timeout", "2s", "--flush-timeout", flushTimeout.String())
	uri := s.URI("stall")
	qemuIO(t, uri, nil, "write -P 0xa1 0 1M", "flush")

	cn, err := nbdclient.Dial(uri, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	resume := srv.Stall(t)
	stalledAt := time.Now()
	b2 := bytes.Repeat([]byte{0xb2}, 1<<20)
	if err := cn.WriteAt(b2, 1<<20); err != nil {
		t.Fatalf("write while the store is stopped (buffered): %v", err)
	}
	took, err := cn.FlushWithin(flushTimeout + 30*time.Second)
	var nerr *nbdclient.Error
	if !errors.As(err, &nerr) || nerr.Errno != nbdEIO {
		t.Fatalf("FLUSH on a stopped store after %s: %v, want EIO", took, err)
	}
	if took < flushTimeout-time.Second || took > flushTimeout+10*time.Second {
		t.Errorf("FLUSH failed after %s, want about --flush-timeout %s", took, flushTimeout)
	}
	// The stall WARN names the operation and the record; it came within
	// seconds (default --stall-warn 5 s after the upload started).
	const warn = `level=WARN msg="object store stalled: record upload is waiting`
	if !s.StderrHas(warn) {
		t.Fatalf("serve logged no stall WARN:\n%s", s.Stderr())
	}
	if since := time.Since(stalledAt); since > 25*time.Second {
		t.Errorf("stall WARN only seen %s after the store stopped", since)
	}
	for _, line := range strings.Split(s.Stderr(), "\n") {
		if strings.Contains(line, warn) && (!strings.Contains(line, "op=put-if-absent") || !strings.Contains(line, "/log/")) {
			t.Errorf("stall WARN does not name the request and the record: %s", line)
		}
	}
	if !s.StderrHas(`level=WARN msg="flush stalled`) {
		t.Errorf("serve logged no WARN for the stalled flush:\n%s", s.Stderr())
	}

	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if took, err := cn.FlushWithin(60 * time.Second); err != nil {
		t.Fatalf("FLUSH after the store resumed (%s): %v", took, err)
	}
	if !s.StderrHas("object store recovered") {
		t.Errorf("serve did not log the recovery:\n%s", s.Stderr())
	}
	got := make([]byte, 1<<20)
	if err := cn.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, b2) {
		t.Fatalf("read back the write whose flush failed: %v (equal %v)", err, bytes.Equal(got, b2))
	}
	cn.Close()
	qemuIO(t, uri, nil, "read -P 0xa1 0 1M", "read -P 0xb2 1M 1M")
	s.StopOK()

	// From the object store alone: a new serve with an empty cache.
	s2 := startServe(t, vol)
	qemuIO(t, s2.URI("stall"), nil, "read -P 0xa1 0 1M", "read -P 0xb2 1M 1M")
	s2.StopOK()
	if strings.Contains(s.Stderr(), "FENCED") {
		t.Errorf("serve fenced itself:\n%s", s.Stderr())
	}
}

// TestStalledStoreReadEIO: a READ that must GET from a stopped store
// (versitygw, SIGSTOP; serve without a cache) fails with EIO after its
// bounded attempts of --store-timeout each, instead of hanging for the S3
// client's own timeouts (a minute per attempt, minutes in all) without a
// word, and serve logs a WARN naming the stalled read within seconds.
// Once the store runs again the same READ returns the data.
func TestStalledStoreReadEIO(t *testing.T) {
	srv := s3server.Start(t)
	vol := volURL(srv.URL, "rstall")
	w := startServe(t, vol, "--create", "--size", "16M")
	qemuIO(t, w.URI("rstall"), nil, "write -P 0xc3 0 1M", "flush")
	w.StopOK()

	s := startServe(t, vol, "--no-cache", "--store-timeout", "2s")
	cn, err := nbdclient.Dial(s.URI("rstall"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	resume := srv.Stall(t)
	got := make([]byte, 1<<20)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cn.ReadAt(got, 0) }()
	select {
	case err = <-done:
	case <-time.After(45 * time.Second):
		t.Fatalf("READ from a stopped store has not returned after 45 s (--store-timeout 2s)\n%s", s.Stderr())
	}
	var nerr *nbdclient.Error
	if !errors.As(err, &nerr) || nerr.Errno != nbdEIO {
		t.Fatalf("READ from a stopped store after %s: %v, want EIO", time.Since(start), err)
	}
	const warn = `level=WARN msg="object store stalled: read is waiting`
	if !s.StderrHas(warn) {
		t.Fatalf("serve logged no stall WARN for the read:\n%s", s.Stderr())
	}
	for _, line := range strings.Split(s.Stderr(), "\n") {
		if strings.Contains(line, warn) && (!strings.Contains(line, "op=get-range") || !strings.Contains(line, "/log/")) {
			t.Errorf("stall WARN does not name the request and the record: %s", line)
		}
	}

	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if err := cn.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xc3}, 1<<20)) {
		t.Fatalf("READ after the store resumed: %v (data ok %v)", err, bytes.Equal(got, bytes.Repeat([]byte{0xc3}, 1<<20)))
	}
	cn.Close()
	s.StopOK()
}
