package objstore

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"
)

// silentServer listens on a TCP port and never answers: the kernel accepts
// connections and takes requests, as from a stopped (SIGSTOP) server.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Regression: the S3 client's HTTP transport waited for response headers
// forever, so an attempt on a stalled server never ended and the SDK never
// got to retry or give up. Each attempt now times out.
func TestS3HTTPClientAttemptTimesOut(t *testing.T) {
	addr := silentServer(t)
	c := newS3HTTPClient(300 * time.Millisecond)
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/bucket/key", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("request to a server that never answers succeeded")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("err = %v, want a timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("attempt took %s, want about 300ms", took)
	}
}

// A request's context deadline covers every attempt of the SDK's retryer:
// on a stalled server a PutIfAbsent with a 1 s deadline returns
// DeadlineExceeded after about 1 s, however many attempts it made.
func TestS3DeadlineBoundsRetries(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CA_BUNDLE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	addr := silentServer(t)
	s, err := Open(context.Background(), "s3://stalled-bucket/pool?endpoint=http://"+addr+"&region=us-east-1&use_path_style=true")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err = s.PutIfAbsent(ctx, "log/1", []byte("x"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PutIfAbsent on a stalled server: err = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("PutIfAbsent with a 1s deadline took %s", took)
	}
}
