// Package gcsserver runs a real GCS emulator (fake-gcs-server) for tests of
// the gs:// backend. It must be installed:
//
//	go install github.com/fsouza/fake-gcs-server@v1.56.1
//
// A missing binary fails the test: tests that need it never skip.
package gcsserver

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// Version is the fake-gcs-server the tests are run with.
const Version = "v1.56.1"

// Server is a running fake-gcs-server. Its fields are read-only.
type Server struct {
	// Endpoint is "http://127.0.0.1:PORT".
	Endpoint string

	names s3server.BucketNames
}

// Start starts fake-gcs-server (in-memory backend) on a free port and stops
// it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := s3server.FindBinary(t, "fake-gcs-server", "go install github.com/fsouza/fake-gcs-server@"+Version)
	ep := s3server.RunServer(t, "fake-gcs-server", func(port int) *exec.Cmd {
		hp := "127.0.0.1:" + strconv.Itoa(port)
		// Without -public-host the Go client's reads get NotFound.
		return exec.Command(bin, "-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
			"-backend", "memory", "-external-url", "http://"+hp, "-public-host", hp, "-log-level", "warn")
	})
	return &Server{Endpoint: ep}
}

// NewBucket creates an empty bucket and returns its pool URL.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := s.names.Next()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := bytes.NewReader([]byte(`{"name":"` + name + `"}`))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.Endpoint+"/storage/v1/b?project=test", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("gcsserver: create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("gcsserver: create bucket %s: %s: %s", name, resp.Status, msg)
	}
	return s.PoolURL(name, "")
}

// PoolURL returns the gs:// pool URL of prefix (may be "") in bucket.
func (s *Server) PoolURL(bucket, prefix string) string {
	u := url.URL{Scheme: "gs", Host: bucket, RawQuery: url.Values{"endpoint": {s.Endpoint}}.Encode()}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	return u.String()
}
