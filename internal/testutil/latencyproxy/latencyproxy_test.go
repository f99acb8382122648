package latencyproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/objstoretest"
	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

func start(t *testing.T, target string, cfg latencyproxy.Config) *latencyproxy.Proxy {
	t.Helper()
	p, err := latencyproxy.Start(target, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// echoServer answers GET /size/N with N bytes and PUT with the number of
// body bytes it read, and records the Host header of the last request.
func echoServer(t *testing.T, host *string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*host = r.Host
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/size/"))
			w.Header().Set("Content-Length", strconv.Itoa(n))
			if r.Method == http.MethodGet {
				_, _ = w.Write(make([]byte, n))
			}
		default:
			n, _ := io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, strconv.Itoa(int(n)))
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, method, u string, body []byte) (*http.Response, []byte, time.Duration) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return resp, got, time.Since(t0)
}

// TestDelays checks the per-method delay (lower bounds only: a loaded
// machine may add any amount) and that the Host header is the client's.
func TestDelays(t *testing.T) {
	var host string
	srv := echoServer(t, &host)
	p := start(t, srv.URL, latencyproxy.Config{ReadDelay: 40 * time.Millisecond, WriteDelay: 80 * time.Millisecond})
	for _, tc := range []struct {
		method string
		min    time.Duration
	}{
		{http.MethodGet, 40 * time.Millisecond},
		{http.MethodHead, 40 * time.Millisecond},
		{http.MethodPut, 80 * time.Millisecond},
		{http.MethodPost, 80 * time.Millisecond},
		{http.MethodDelete, 80 * time.Millisecond},
	} {
		resp, _, el := do(t, tc.method, p.URL+"/size/10", []byte("x"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", tc.method, resp.StatusCode)
		}
		if el < tc.min {
			t.Errorf("%s took %v, want >= %v", tc.method, el, tc.min)
		}
		if host != p.Addr {
			t.Errorf("%s: server saw Host %q, want the client's %q", tc.method, host, p.Addr)
		}
	}
}

// TestRateCap checks that a 10 MiB body at 100 MB/s takes at least ~90 ms in
// each direction (lower bounds only).
func TestRateCap(t *testing.T) {
	var host string
	srv := echoServer(t, &host)
	p := start(t, srv.URL, latencyproxy.Config{BytesPerSecond: 100e6})
	const size = 10 << 20
	min := time.Duration(float64(size-64<<10) / 100e6 * float64(time.Second)) // the first burst is free

	resp, got, el := do(t, http.MethodGet, p.URL+"/size/"+strconv.Itoa(size), nil)
	if resp.StatusCode != http.StatusOK || len(got) != size {
		t.Fatalf("GET: status %d, %d bytes, want 200 and %d", resp.StatusCode, len(got), size)
	}
	if el < min {
		t.Errorf("GET of 10 MiB took %v, want >= %v at 100 MB/s", el, min)
	}

	resp, got, el = do(t, http.MethodPut, p.URL+"/x", make([]byte, size))
	if resp.StatusCode != http.StatusOK || string(got) != strconv.Itoa(size) {
		t.Fatalf("PUT: status %d, server read %q bytes, want %d", resp.StatusCode, got, size)
	}
	if el < min {
		t.Errorf("PUT of 10 MiB took %v, want >= %v at 100 MB/s", el, min)
	}
}

// TestStartRejectsBadInput checks the errors for a bad target or config.
func TestStartRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		target string
		cfg    latencyproxy.Config
	}{
		{"127.0.0.1:9000", latencyproxy.Config{}},
		{"ftp://127.0.0.1:9000", latencyproxy.Config{}},
		{"http://127.0.0.1:9000", latencyproxy.Config{ReadDelay: -time.Second}},
		{"http://127.0.0.1:9000", latencyproxy.Config{BytesPerSecond: -1}},
	} {
		if p, err := latencyproxy.Start(tc.target, tc.cfg); err == nil {
			_ = p.Close()
			t.Errorf("Start(%q, %+v) succeeded, want an error", tc.target, tc.cfg)
		}
	}
}

// TestS3ThroughProxy talks to a real versitygw through the proxy with the
// AWS SDK: SigV4 signatures still verify (the Host is passed through), a
// conditional create still gets 412 the second time, ranged GETs return
// the right bytes, and urldisk's own S3 store passes its whole contract.
func TestS3ThroughProxy(t *testing.T) {
	gw := s3server.Start(t)
	p := start(t, gw.Endpoint, latencyproxy.Config{ReadDelay: time.Millisecond, WriteDelay: 2 * time.Millisecond, BytesPerSecond: 100e6})

	ctx := t.Context()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(s3server.Region))
	if err != nil {
		t.Fatal(err)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(p.URL)
		o.UsePathStyle = true
	})
	bucket := mustHost(t, gw.NewBucket(t))
	data := make([]byte, 3<<20) // above the SDK's 2 MiB Expect: 100-continue threshold
	for i := range data {
		data[i] = byte(i * 7)
	}
	// A key with characters that are escaped in the path: the canonical
	// request must survive the proxy's URL handling.
	key := "dir/a b+c=d%e~é"
	put := func() error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*")})
		return err
	}
	if err := put(); err != nil {
		t.Fatalf("PutObject through the proxy: %v", err)
	}
	var re *awshttp.ResponseError
	if err := put(); !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusPreconditionFailed {
		t.Fatalf("second conditional PutObject: err = %v, want HTTP 412", err)
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key, Range: aws.String("bytes=1000-5095")})
	if err != nil {
		t.Fatalf("ranged GetObject: %v", err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || !bytes.Equal(got, data[1000:5096]) {
		t.Fatalf("ranged GetObject: %d bytes, err %v; want bytes 1000-5095 of the object", len(got), err)
	}
	head, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key})
	if err != nil || aws.ToInt64(head.ContentLength) != int64(len(data)) {
		t.Fatalf("HeadObject: %v, length %d, want %d", err, aws.ToInt64(head.ContentLength), len(data))
	}

	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		u, err := url.Parse(gw.NewBucket(t))
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("endpoint", p.URL)
		u.RawQuery = q.Encode()
		s, err := objstore.Open(context.Background(), u.String())
		if err != nil {
			t.Fatalf("open %s: %v", u, err)
		}
		return s
	})
}

func mustHost(t *testing.T, poolURL string) string {
	t.Helper()
	u, err := url.Parse(poolURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestDropConditional: through a proxy with DropConditional a real S3
// server overwrites on a second conditional create, which objstore.Probe
// detects; straight to the server the probe passes.
func TestDropConditional(t *testing.T) {
	srv := s3server.Start(t)
	p := start(t, srv.Endpoint, latencyproxy.Config{DropConditional: &latencyproxy.Credentials{AccessKey: s3server.AccessKey, SecretKey: s3server.SecretKey, Region: s3server.Region}})
	for _, c := range []struct {
		endpoint string
		want     bool
	}{{srv.Endpoint, true}, {p.URL, false}} {
		u := strings.Replace(srv.URL, url.QueryEscape(srv.Endpoint), url.QueryEscape(c.endpoint), 1)
		s, err := objstore.Open(t.Context(), u)
		if err != nil {
			t.Fatal(err)
		}
		got, err := objstore.Probe(t.Context(), s)
		s.Close()
		if err != nil || got != c.want {
			t.Errorf("Probe through %s = %v, %v; want %v, nil", c.endpoint, got, err, c.want)
		}
	}
}
