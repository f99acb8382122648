// Package s3server runs a real S3 server (versitygw with its posix backend)
// for tests. Start it once per test (or per TestMain-created testing.TB) and
// create a fresh bucket per store with NewBucket.
//
// versitygw must be installed:
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// A missing binary fails the test: tests that need S3 never skip.
package s3server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Credentials and region of every server started here. They are test-only
// values; Start puts them in the environment, where the AWS SDK's standard
// chain finds them.
const (
	AccessKey = "k"
	SecretKey = "s"
	Region    = "us-east-1"
)

// Server is a running versitygw. Its fields are read-only.
type Server struct {
	// Endpoint is the server's base URL, "http://127.0.0.1:PORT".
	Endpoint string
	// URL is the pool URL of an empty bucket created by Start:
	// "s3://BUCKET?endpoint=...&region=us-east-1&use_path_style=true".
	URL string
	// Dir is the server's posix backend directory (one subdirectory per bucket).
	Dir string

	client *s3.Client
	proc   *os.Process // the versitygw process, for Signal

	names BucketNames
}

// Binary returns the path of the versitygw binary (see FindBinary).
func Binary(t testing.TB) string {
	t.Helper()
	return FindBinary(t, "versitygw", "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
}

// FindBinary returns the path of the test server binary name: from PATH,
// else $GOBIN, $GOPATH/bin or ~/go/bin (where go install and
// scripts/install-test-deps.sh put them). It fails t with installHint if
// none is found: tests that need a real server never skip.
func FindBinary(t testing.TB, name, installHint string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("GOPATH"); d != "" {
		dirs = append(dirs, filepath.Join(filepath.SplitList(d)[0], "bin"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	t.Fatalf("%s not found in PATH or %v; these tests need a real object store. Install it with:\n\t%s\n(or run scripts/install-test-deps.sh)", name, dirs, installHint)
	return ""
}

// Start starts versitygw on a free 127.0.0.1 port with a fresh posix
// directory, waits until it answers, creates one bucket (Server.URL) and
// stops the server when t ends.
//
// Start sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION for the
// SDK's standard chain and clears AWS_CA_BUNDLE, AWS_PROFILE and
// AWS_ENDPOINT_URL*, with t.Setenv: the calling test must not be parallel.
// Child processes inherit that environment (see also Env).
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	for _, kv := range Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_SESSION_TOKEN", "")

	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := start(t, bin, dir)
		if err == nil {
			s.URL = s.NewBucket(t)
			return s
		}
		lastErr = err
		t.Logf("s3server: attempt %d: %v", attempt+1, err)
	}
	t.Fatalf("s3server: could not start versitygw: %v", lastErr)
	return nil
}

// Env returns the environment (KEY=value) an S3 client process needs to
// talk to servers started here.
func Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + SecretKey,
		"AWS_REGION=" + Region,
		// The environment's CA bundle breaks SDK clients; the server is http.
		"AWS_CA_BUNDLE=",
	}
}

// start runs one versitygw and waits for it; on failure it is stopped.
func start(t testing.TB, bin, dir string) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "--port", addr, "posix", dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	endpoint := "http://" + addr
	if err := launch(t, "versitygw", endpoint, cmd); err != nil {
		return nil, err
	}

	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithRegion(Region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, "")),
	)
	if err != nil {
		return nil, fmt.Errorf("AWS config: %w", err)
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
	return &Server{Endpoint: endpoint, Dir: dir, client: client, proc: cmd.Process}, nil
}

// Signal sends sig to the server process: SIGSTOP makes it a stalled store
// (connections are accepted by the kernel and never answered), SIGCONT
// resumes it. Start's cleanup resumes a stopped server before stopping it.
func (s *Server) Signal(sig os.Signal) error {
	if err := s.proc.Signal(sig); err != nil {
		return fmt.Errorf("signal versitygw: %w", err)
	}
	return nil
}

// Stall stops the server (SIGSTOP) and returns resume, which continues it
// (SIGCONT) the first time it is called. A cleanup registered now resumes
// it if the test did not: cleanups run last-registered first, so a store
// stalled after its clients started is running again before their
// cleanups stop them (and they flush).
func (s *Server) Stall(t testing.TB) (resume func() error) {
	t.Helper()
	if err := s.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var err error
	resume = func() error {
		once.Do(func() { err = s.Signal(syscall.SIGCONT) })
		return err
	}
	t.Cleanup(func() { resume() })
	return resume
}

// WaitReady polls endpoint until it answers HTTP (any status), the server
// (called name in errors) exits, or 30 s pass.
func WaitReady(name, endpoint string, exited <-chan error) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("%s exited before answering: %v", name, werr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer on %s within 30s: %v", name, endpoint, err)
		}
	}
}

// FreePort returns a free TCP port on 127.0.0.1 for a server to listen on.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewBucket creates an empty bucket and returns its pool URL (see PoolURL).
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := s.names.Next()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("s3server: create bucket %s: %v", name, err)
	}
	return s.PoolURL(name, "")
}

// PoolURL returns the pool URL of prefix (may be "") in bucket on this
// server, with the endpoint, region and path-style options.
func (s *Server) PoolURL(bucket, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", s.Endpoint)
	q.Set("region", Region)
	q.Set("use_path_style", "true")
	u := url.URL{Scheme: "s3", Host: bucket, Path: "/" + prefix, RawQuery: q.Encode()}
	if prefix == "" {
		u.Path = ""
	}
	return u.String()
}

// Client returns an S3 client for this server with the root credentials,
// for tests that need to look underneath a Store.
func (s *Server) Client() *s3.Client { return s.client }
