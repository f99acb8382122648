package s3server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// MinIO's root credentials here: test-only values (MinIO wants a password
// of at least 8 characters, so they differ from versitygw's).
const (
	MinIOAccessKey = "urldisk-test"
	MinIOSecretKey = "urldisk-test-secret"
)

// MinIOInstall is how scripts/install-test-deps.sh installs MinIO (the
// pseudo-version of the compatibility table, from the Go module proxy;
// minutes to build).
const MinIOInstall = "go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"

// StartMinIO is Start for a MinIO server (a second S3 implementation, with
// its own conditional-write code): on a free port with a fresh directory,
// one bucket created (Server.URL). It sets the AWS environment to MinIO's
// credentials with t.Setenv (the test must not be parallel). Signal is not
// supported on it.
func StartMinIO(t testing.TB) *Server {
	t.Helper()
	bin := FindBinary(t, "minio", MinIOInstall)
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": MinIOAccessKey, "AWS_SECRET_ACCESS_KEY": MinIOSecretKey,
		"AWS_REGION": Region, "AWS_CA_BUNDLE": "", "AWS_PROFILE": "", "AWS_ENDPOINT_URL": "",
		"AWS_ENDPOINT_URL_S3": "", "AWS_SESSION_TOKEN": "",
	} {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	ep := RunServer(t, "minio", func(port int) *exec.Cmd {
		cmd := exec.Command(bin, "server", dir, "--quiet", "--address", "127.0.0.1:"+strconv.Itoa(port))
		cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+MinIOAccessKey, "MINIO_ROOT_PASSWORD="+MinIOSecretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off")
		return cmd
	})
	// MinIO answers HTTP before its storage is up: wait for its own
	// readiness probe.
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(ep + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("minio at %s not ready within 30s (last: %v)", ep, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s := &Server{Endpoint: ep, Dir: dir, client: newClient(t, ep, MinIOAccessKey, MinIOSecretKey)}
	s.URL = s.NewBucket(t)
	return s
}

// newClient returns a path-style S3 client for endpoint.
func newClient(t testing.TB, endpoint, key, secret string) *s3.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithRegion(Region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(key, secret, "")),
	)
	if err != nil {
		t.Fatal(fmt.Errorf("load AWS config: %w", err))
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
}
