package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// testPKI is testpki's CA, server certificate (valid for 127.0.0.1 and
// localhost) and client certificate, loaded for in-process use.
type testPKI struct {
	pool      *x509.CertPool
	server    tls.Certificate
	client    tls.Certificate // a client certificate the CA signed
	certsDir  string          // libnbd tls-certificates directory (ca-cert.pem)
	clientDir string          // the same plus client-cert.pem and client-key.pem
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	files := testpki.New(t)
	server, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	client, err := tls.LoadX509KeyPair(filepath.Join(files.ClientDir, "client-cert.pem"), filepath.Join(files.ClientDir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{pool: files.Pool, server: server, client: client, certsDir: files.CertsDir, clientDir: files.ClientDir}
}

func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.server}}
}

// serveTCP starts srv on 127.0.0.1 and returns the listener address.
func serveTCP(t *testing.T, srv *Server) net.Addr {
	t.Helper()
	ln, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, ln)
	return ln.Addr()
}

func TestTLSNbdinfo(t *testing.T) {
	pki := newTestPKI(t)
	opts, d := ramExport(8<<20, false)
	opts.TLSConfig = pki.serverConfig()
	opts.RequireTLS = true
	srv := newTestServer(t, opts)
	addr := serveTCP(t, srv)
	uri, err := URI(addr, "disk", true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(uri, "nbds://127.0.0.1:") {
		t.Fatalf("URI %q", uri)
	}
	out := run(t, "nbdinfo", "--json", uri+"?tls-certificates="+pki.certsDir)
	var info struct {
		TLS     bool `json:"TLS"`
		Exports []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parse nbdinfo --json: %v\n%s", err, out)
	}
	if !info.TLS || len(info.Exports) != 1 || info.Exports[0]["export-size"] != float64(8<<20) {
		t.Errorf("nbdinfo over TLS: %s", out)
	}

	// Data over TLS with qemu-io is covered by nbdcopy (libnbd) here.
	src, data := randomFile(t, t.TempDir(), 8<<20)
	run(t, "nbdcopy", src, uri+"?tls-certificates="+pki.certsDir)
	if string(d.Bytes()) != string(data) {
		t.Error("nbdcopy over TLS: device differs from source")
	}

	// Without TLS the server refuses: plain nbd:// is rejected.
	plain, _ := URI(addr, "disk", false)
	if out, err := runErr(t, "nbdinfo", plain); err == nil {
		t.Errorf("nbdinfo without TLS succeeded against a RequireTLS server:\n%s", out)
	}
	// A client that trusts another CA fails the TLS handshake.
	other := newTestPKI(t)
	if out, err := runErr(t, "nbdinfo", uri+"?tls-certificates="+other.certsDir); err == nil {
		t.Errorf("nbdinfo trusting another CA succeeded:\n%s", out)
	}
}

// startTLS sends NBD_OPT_STARTTLS and upgrades the client connection.
func (c *testClient) startTLS(pki *testPKI) {
	c.t.Helper()
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repAck {
		c.t.Fatalf("NBD_OPT_STARTTLS: reply %#x", r.typ)
	}
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pki.pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.nc = tc
}

func TestTLSRequiredGoClient(t *testing.T) {
	pki := newTestPKI(t)
	opts, _ := ramExport(1<<20, false)
	opts.TLSConfig = pki.serverConfig()
	opts.RequireTLS = true
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	for _, opt := range []uint32{optList, optStructuredReply, 99} {
		c.sendOption(opt, nil)
		if r := c.readOptReply(); r.typ != repErrTLSReqd {
			t.Errorf("option %d before TLS: %#x, want NBD_REP_ERR_TLS_REQD", opt, r.typ)
		}
	}
	if _, typ := c.info(optGo, "disk"); typ != repErrTLSReqd {
		t.Errorf("GO before TLS: %#x", typ)
	}
	c.sendOption(optStartTLS, []byte("x"))
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("STARTTLS with data: %#x", r.typ)
	}
	c.startTLS(pki)
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("second STARTTLS: %#x, want NBD_REP_ERR_INVALID", r.typ)
	}
	if ei, typ := c.info(optGo, "disk"); typ != repAck || ei.size != 1<<20 {
		t.Fatalf("GO over TLS: %#x %+v", typ, ei)
	}
	if errno := c.do(0, cmdWrite, 100, 5, []byte("hello")); errno != 0 {
		t.Fatalf("write over TLS: errno %d", errno)
	}
	if data, errno := c.pread(100, 5); errno != 0 || string(data) != "hello" {
		t.Fatalf("read over TLS: %q errno %d", data, errno)
	}
	c.disconnect()
	c.expectClosed() // reads the TLS close_notify
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
}

func TestTLSRequiredExportNameWithoutTLS(t *testing.T) {
	pki := newTestPKI(t)
	opts, _ := ramExport(1<<20, false)
	opts.TLSConfig = pki.serverConfig()
	opts.RequireTLS = true
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	c.sendOption(optExportName, []byte("disk"))
	c.expectClosed()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after EXPORT_NAME without the required TLS")
	}
}

func TestTLSOptional(t *testing.T) {
	pki := newTestPKI(t)
	opts, _ := ramExport(1<<20, false)
	opts.TLSConfig = pki.serverConfig()
	srv := newTestServer(t, opts)
	// Plain client.
	c, _ := pipeConn(t, srv)
	c.connect("disk")
	if _, errno := c.pread(0, 10); errno != 0 {
		t.Errorf("plain read: errno %d", errno)
	}
	// TLS client.
	c2, _ := pipeConn(t, srv)
	c2.greet(flagCFixedNewstyle)
	c2.startTLS(pki)
	if _, typ := c2.info(optGo, "disk"); typ != repAck {
		t.Fatalf("GO over TLS: %#x", typ)
	}
	if _, errno := c2.pread(0, 10); errno != 0 {
		t.Errorf("TLS read: errno %d", errno)
	}
}

func TestTLSBadHandshake(t *testing.T) {
	pki := newTestPKI(t)
	opts, _ := ramExport(1<<20, false)
	opts.TLSConfig = pki.serverConfig()
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STARTTLS: %#x", r.typ)
	}
	c.write([]byte("this is not a TLS client hello at all......"))
	c.expectClosed()
	if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Errorf("ServeConn: %v, want TLS handshake error", err)
	}
}

// TestTLSClientCertificates: with client certificates required
// (--tls-client-ca), a client without one fails the TLS handshake and
// never reaches an export, a client with one signed by the CA is served,
// and nbdinfo (libnbd/GnuTLS) with and without client-cert.pem in its
// tls-certificates directory behaves the same.
func TestTLSClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	opts, _ := ramExport(1<<20, false)
	conf := pki.serverConfig()
	conf.ClientCAs = pki.pool
	conf.ClientAuth = tls.RequireAndVerifyClientCert
	opts.TLSConfig = conf
	opts.RequireTLS = true
	srv := newTestServer(t, opts)
	addr := serveTCP(t, srv)

	dial := func() *testClient {
		nc, err := net.DialTimeout("tcp", addr.String(), testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(testTimeout))
		t.Cleanup(func() { nc.Close() })
		c := &testClient{t: t, nc: nc}
		c.greet(flagCFixedNewstyle | flagCNoZeroes)
		c.sendOption(optStartTLS, nil)
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("NBD_OPT_STARTTLS: reply %#x", r.typ)
		}
		return c
	}

	// No client certificate: TLS 1.3 reports the refusal on the first read.
	c := dial()
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pki.pool, ServerName: "localhost"})
	err := tc.Handshake()
	if err == nil {
		c.nc = tc
		c.sendOption(optGo, infoData("disk"))
		_, err = io.ReadFull(tc, make([]byte, optReplyHeadLen))
	}
	if err == nil {
		t.Fatal("a client without a certificate got an option reply over TLS")
	}

	// A certificate signed by the CA: served.
	c = dial()
	tc = tls.Client(c.nc, &tls.Config{RootCAs: pki.pool, ServerName: "localhost", Certificates: []tls.Certificate{pki.client}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with a client certificate: %v", err)
	}
	c.nc = tc
	if _, typ := c.info(optGo, "disk"); typ != repAck {
		t.Fatalf("GO with a client certificate: %#x", typ)
	}
	if errno := c.do(0, cmdWrite, 0, 5, []byte("hello")); errno != 0 {
		t.Fatalf("write with a client certificate: errno %d", errno)
	}

	uri, err := URI(addr, "disk", true)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(t, "nbdinfo", "--size", uri+"?tls-certificates="+pki.certsDir); err == nil {
		t.Errorf("nbdinfo without a client certificate succeeded:\n%s", out)
	}
	if out := strings.TrimSpace(run(t, "nbdinfo", "--size", uri+"?tls-certificates="+pki.clientDir)); out != "1048576" {
		t.Errorf("nbdinfo with a client certificate: size %q, want 1048576", out)
	}
}
