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

	px, proxied := dropConditionalProxy(t, srv, pool)

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

// dropConditionalProxy starts a proxy to srv that drops If-None-Match and
// If-Match, and returns it and pool's URL through it.
func dropConditionalProxy(t *testing.T, srv *s3server.Server, pool string) (*latencyproxy.Proxy, string) {
	t.Helper()
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
	return px, proxied
}

// TestInitAndCreateWithoutConditionalCreate: `urldisk pool init` through a
// store that ignores If-None-Match creates the pool but warns that writers
// will be refused; `urldisk create` there, and in a conforming pool
// reached through that store, exits 1 with the clear error instead of
// creating a volume no writer could open.
func TestInitAndCreateWithoutConditionalCreate(t *testing.T) {
	srv := s3server.Start(t)
	good := srv.URL
	mustRun(t, "urldisk", "pool", "init", good)
	px, goodProxied := dropConditionalProxy(t, srv, good)
	_, roPool := dropConditionalProxy(t, srv, srv.NewBucket(t))

	out := mustRun(t, "urldisk", "pool", "init", roPool)
	if !strings.Contains(out, "(conditional create: false)") || !strings.Contains(out, "WARNING: ") ||
		!strings.Contains(out, "read-write attach and `urldisk create` will be refused") {
		t.Errorf("pool init through the proxy did not warn:\n%s", out)
	}
	for _, pool := range []string{roPool, goodProxied} {
		r := run(t, "urldisk", "create", volURL(pool, "v"), "--size", "8M")
		if r.code != 1 || !strings.Contains(r.stderr, "object store does not support conditional create") ||
			!strings.Contains(r.stderr, px.Addr[:strings.LastIndex(px.Addr, ":")]) {
			t.Errorf("create through the proxy: want exit 1 and the conditional-create error:\n%s", r)
		}
	}
	if r := run(t, "urldisk", "info", volURL(good, "v")); r.code == 0 {
		t.Errorf("the refused create left a volume:\n%s", r)
	}
}
