package s3server_test

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

func TestStartAndStop(t *testing.T) {
	var endpoint string
	t.Run("serve", func(t *testing.T) {
		srv := s3server.Start(t)
		endpoint = srv.Endpoint
		u, err := url.Parse(srv.URL)
		if err != nil || u.Scheme != "s3" || u.Host == "" || u.Query().Get("endpoint") != srv.Endpoint ||
			u.Query().Get("region") != s3server.Region || u.Query().Get("use_path_style") != "true" {
			t.Fatalf("URL %q is not a pool URL for this server (%v)", srv.URL, err)
		}
		second := srv.NewBucket(t)
		if second == srv.URL {
			t.Fatalf("NewBucket returned the first bucket again: %s", second)
		}
		out, err := srv.Client().ListBuckets(t.Context(), &s3.ListBucketsInput{})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Buckets) != 2 {
			t.Fatalf("server has %d buckets, want 2", len(out.Buckets))
		}
		if got, want := srv.PoolURL("b", "p/q"), "s3://b/p/q?endpoint="+url.QueryEscape(srv.Endpoint)+"&region=us-east-1&use_path_style=true"; got != want {
			t.Fatalf("PoolURL = %q, want %q", got, want)
		}
	})
	// The subtest's cleanup stopped the server.
	conn, err := net.Dial("tcp", strings.TrimPrefix(endpoint, "http://"))
	if err == nil {
		conn.Close()
		t.Fatalf("server at %s still answers after its test ended", endpoint)
	}
}

// fakeTB records Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	fatal string
}

func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }
func (f *fakeTB) Helper()                           {}

func TestMissingBinaryFails(t *testing.T) {
	t.Setenv("PATH", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("GOBIN", "")
	t.Setenv("GOPATH", "")
	f := &fakeTB{TB: t}
	if p := s3server.Binary(f); p != "" || !strings.Contains(f.fatal, "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0") {
		t.Fatalf("Binary without versitygw = %q, fatal %q; want a fatal install hint", p, f.fatal)
	}
}
