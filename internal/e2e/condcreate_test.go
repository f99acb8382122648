package e2e

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// TestServeRefusesStoreWithoutConditionalCreate: a pool initialised and
// written through a real versitygw, then reached through a proxy that
// drops If-None-Match (a store where two writers could both own the
// volume): `urldisk serve` read-write exits 1 with an error naming the
// store, the proxy's address and the server, and writes no fence;
// `serve --read-only` through the same proxy still serves the data to a
// real NBD client. Before the probe ran at every read-write attach, the
// pool marker's answer from init let the writer in.
func TestServeRefusesStoreWithoutConditionalCreate(t *testing.T) {
	srv := s3server.Start(t) // sets the AWS environment serve inherits
	pool := srv.URL
	mustRun(t, "urldisk", "pool", "init", pool)
	createVolume(t, volURL(pool, "v"), "8M")
	rw := startServe(t, volURL(pool, "v"))
	qemuIO(t, rw.URI("v"), nil, "write -P 0xab 0 64k", "flush")
	rw.StopOK()

	px, err := latencyproxy.Start(srv.Endpoint, latencyproxy.Config{DropConditional: &latencyproxy.Credentials{
		AccessKey: s3server.AccessKey, SecretKey: s3server.SecretKey, Region: s3server.Region}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	proxied := strings.Replace(pool, url.QueryEscape(srv.Endpoint), url.QueryEscape(px.URL), 1)
	if proxied == pool {
		t.Fatalf("could not point %s at the proxy", pool)
	}

	bad := launchServe(t, newHost(t), volURL(proxied, "v"))
	bad.expectFailure = true
	if code := bad.Wait(2 * time.Minute); code != 1 {
		t.Fatalf("serve read-write through a store without conditional create exited %d, want 1\n%s", code, bad.Stderr())
	}
	for _, want := range []string{"object store does not support conditional create; read-write attach refused",
		`s3 bucket "urldisk-test-1" at ` + px.Addr, `(server "VERSITYGW")`} {
		if !bad.StderrHas(want) {
			t.Errorf("serve's error does not say %q:\n%s", want, bad.Stderr())
		}
	}

	ro := startServe(t, "--read-only", volURL(proxied, "v"))
	qemuIO(t, ro.URI("v"), []string{"-r"}, "read -P 0xab 0 64k", "read -P 0 64k 64k")
	ro.StopOK()
}
