package e2e

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// NBD handshake constants the raw exchanges below need (see the NBD
// protocol document).
const (
	nbdOptGo          = 7
	nbdOptReplyMagic  = 0x3e889045565a9
	nbdRepErrTLSReqd  = 1<<31 + 5
	nbdRepErrShutdown = 1<<31 + 7
	nbdFixedNewstyle  = 1
)

// optExchange dials addr (network "tcp" or "unix"), reads the greeting,
// sends fixed newstyle client flags and NBD_OPT_GO for export, and
// returns the reply's type and message. It never starts TLS.
func optExchange(t *testing.T, network, addr, export string) (uint32, string) {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	b := binary.BigEndian.AppendUint32(nil, nbdFixedNewstyle)
	b = binary.BigEndian.AppendUint64(b, nbdOptMagic)
	b = binary.BigEndian.AppendUint32(b, nbdOptGo)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(export)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint16(b, 0) // no information requests
	if _, err := c.Write(b); err != nil {
		t.Fatalf("send NBD_OPT_GO: %v", err)
	}
	var h [20]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("read NBD_OPT_GO reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(h[0:8]); m != nbdOptReplyMagic {
		t.Fatalf("option reply magic %#x", m)
	}
	msg := make([]byte, binary.BigEndian.Uint32(h[16:20]))
	if _, err := io.ReadFull(c, msg); err != nil {
		t.Fatalf("read NBD_OPT_GO reply data: %v", err)
	}
	return binary.BigEndian.Uint32(h[12:16]), string(msg)
}

// TestServeTLSRequired: serve with --tls-cert/--tls-key refuses clients
// that skip STARTTLS (NBD_OPT_GO gets NBD_REP_ERR_TLS_REQD,
// NBD_OPT_EXPORT_NAME a closed connection, so no data is readable), and
// with --tls-client-ca it serves only clients with a certificate the CA
// signed.
func TestServeTLSRequired(t *testing.T) {
	pki := testpki.New(t)
	vol := volURL(filePool(t), "sec")
	createVolume(t, vol, "8M")
	s := startServe(t, vol, "--listen", "tcp:127.0.0.1:0",
		"--tls-cert", pki.CertFile, "--tls-key", pki.KeyFile, "--tls-client-ca", pki.CAFile)
	u, err := url.Parse(s.URI("sec"))
	if err != nil || u.Scheme != "nbds" {
		t.Fatalf("serve printed %q, want an nbds:// URI", s.URI("sec"))
	}

	if typ, msg := optExchange(t, "tcp", u.Host, "sec"); typ != nbdRepErrTLSReqd {
		t.Errorf("NBD_OPT_GO without STARTTLS: reply %#x %q, want NBD_REP_ERR_TLS_REQD", typ, msg)
	}
	// NBD_OPT_EXPORT_NAME cannot carry an error: the server must hang up
	// rather than answer with the export's size and flags.
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	b := binary.BigEndian.AppendUint32(nil, nbdFixedNewstyle)
	b = binary.BigEndian.AppendUint64(b, nbdOptMagic)
	b = binary.BigEndian.AppendUint32(b, nbdOptExport)
	b = binary.BigEndian.AppendUint32(b, 3)
	b = append(b, "sec"...)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if n, err := io.ReadFull(c, make([]byte, 10)); err == nil || errors.Is(err, io.ErrUnexpectedEOF) && n > 0 {
		t.Errorf("NBD_OPT_EXPORT_NAME without STARTTLS: got %d bytes of export info (err %v), want the connection closed", n, err)
	}

	// Real clients: plaintext refused; TLS without a client certificate
	// refused; with one served.
	plain := "nbd://" + u.Host + "/sec"
	if r := run(t, "nbdinfo", "--size", plain); r.code == 0 {
		t.Errorf("plaintext nbdinfo succeeded:\n%s", r)
	}
	if r := run(t, "nbdinfo", "--size", s.URI("sec")+"?tls-certificates="+pki.CertsDir); r.code == 0 {
		t.Errorf("nbdinfo without a client certificate succeeded:\n%s", r)
	}
	// A client certificate another CA signed (trusting serve's CA, so only
	// --tls-client-ca's verification can refuse it): refused.
	foreign := testpki.New(t)
	forged := t.TempDir()
	for src, name := range map[string]string{
		filepath.Join(pki.CertsDir, "ca-cert.pem"):          "ca-cert.pem",
		filepath.Join(foreign.ClientDir, "client-cert.pem"): "client-cert.pem",
		filepath.Join(foreign.ClientDir, "client-key.pem"):  "client-key.pem",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(forged, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if r := run(t, "nbdinfo", "--size", s.URI("sec")+"?tls-certificates="+forged); r.code == 0 {
		t.Errorf("nbdinfo with a client certificate another CA signed succeeded:\n%s", r)
	}
	if out := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", s.URI("sec")+"?tls-certificates="+pki.ClientDir)); out != "8388608" {
		t.Errorf("nbdinfo with a client certificate: size %q, want 8388608", out)
	}
	s.StopOK()
}

// TestServeConnectionLimits: serve --max-conns closes connections over
// the limit at accept with one warning (not a line each), and
// --handshake-timeout closes idle handshakes, which makes room again.
func TestServeConnectionLimits(t *testing.T) {
	vol := volURL(filePool(t), "lim")
	createVolume(t, vol, "8M")
	s := startServe(t, vol, "--max-conns", "3", "--handshake-timeout", "5s")
	if !s.StderrHas("max_conns=3") {
		t.Errorf("serve did not log its connection limit:\n%s", s.Stderr())
	}
	var idle []net.Conn
	for range 3 {
		c, err := net.DialTimeout("unix", s.Socket, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
			t.Fatalf("greeting under the limit: %v", err)
		}
		idle = append(idle, c)
	}
	const extra = 20
	start := time.Now()
	for i := range extra {
		c, err := net.DialTimeout("unix", s.Socket, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		n, err := io.ReadFull(c, make([]byte, 18))
		c.Close()
		if err == nil || n != 0 {
			// The idle ones may have timed out already on a very slow
			// machine.
			if time.Since(start) < 4*time.Second {
				t.Fatalf("connection %d over --max-conns got %d bytes of greeting", i, n)
			}
		}
	}
	if !s.StderrHas("connection limit reached") {
		t.Errorf("no warning about refused connections:\n%s", s.Stderr())
	}
	if n := strings.Count(s.Stderr(), "connection limit reached"); n > 2 {
		t.Errorf("%d warnings for %d refused connections; want them rate-limited", n, extra)
	}

	// The idle handshakes are closed after --handshake-timeout.
	for _, c := range idle {
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("idle handshake: read %v, want EOF after --handshake-timeout", err)
		}
	}
	if r := run(t, "nbdinfo", "--size", s.URI("lim")); r.code != 0 || strings.TrimSpace(r.stdout) != "8388608" {
		t.Errorf("nbdinfo after the idle handshakes timed out:\n%s", r)
	}
	s.StopOK()
}

// TestFencedServeExits: when a second writer takes over one of two
// volumes, the old serve refuses new clients for that export (with a
// message saying fenced, without a log line per attempt) and keeps serving
// the other; once the other is taken over too, it exits with status 3
// within a bounded time, saying so once.
func TestFencedServeExits(t *testing.T) {
	pool := filePool(t)
	x, y := volURL(pool, "x"), volURL(pool, "y")
	createVolume(t, x, "16M")
	createVolume(t, y, "16M")
	a := startServe(t, x, y)
	a.expectFailure = true
	qemuIO(t, a.URI("x"), nil, "write -P 0x01 0 64k", "flush")
	qemuIO(t, a.URI("y"), nil, "write -P 0x01 0 64k", "flush")

	startServe(t, x) // takes x over
	r := run(t, "qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x02 0 64k", "-c", "flush", a.URI("x"))
	if r.code == 0 {
		t.Fatalf("flush on the fenced export succeeded:\n%s", r)
	}
	if !a.StderrHas("export fenced") {
		t.Fatalf("serve did not log the fenced export:\n%s", a.Stderr())
	}

	// Clients reconnecting in a loop: each refused, no log line each.
	lines := strings.Count(a.Stderr(), "\n")
	for range 20 {
		typ, msg := optExchange(t, "unix", a.Socket, "x")
		if typ != nbdRepErrShutdown || !strings.Contains(msg, "fenced") {
			t.Fatalf("NBD_OPT_GO for the fenced export: reply %#x %q, want NBD_REP_ERR_SHUTDOWN saying fenced", typ, msg)
		}
	}
	if grown := strings.Count(a.Stderr(), "\n") - lines; grown > 3 {
		t.Errorf("20 refused reconnects logged %d lines:\n%s", grown, a.Stderr())
	}
	// The other export is still served.
	qemuIO(t, a.URI("y"), nil, "read -P 0x01 0 64k", "write -P 0x03 64k 64k", "flush")
	select {
	case <-a.exited:
		t.Fatalf("serve exited (%d) with a volume still its own:\n%s", a.code, a.Stderr())
	default:
	}

	startServe(t, y) // takes y over: now every volume of a is fenced
	run(t, "qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x04 0 64k", "-c", "flush", a.URI("y"))
	if code := a.Wait(30 * time.Second); code != 3 {
		t.Errorf("fenced serve exited %d, want 3\n%s", code, a.Stderr())
	}
	if n := strings.Count(a.Stderr(), "all read-write volumes fenced"); n != 1 {
		t.Errorf("serve said %d times that all volumes were fenced, want once:\n%s", n, a.Stderr())
	}
	if n := strings.Count(a.Stderr(), "\n"); n > 100 {
		t.Errorf("fenced serve logged %d lines", n)
	}
	if c, err := net.DialTimeout("unix", a.Socket, time.Second); err == nil {
		c.Close()
		t.Error("the exited serve's socket still accepts connections")
	}
}

// TestServeHardeningFlags: bad values of the hardening flags are refused
// with errors naming them, and a plaintext TCP listener on a non-loopback
// address logs one warning naming the address (a loopback one none).
func TestServeHardeningFlags(t *testing.T) {
	pki := testpki.New(t)
	vol := volURL(filePool(t), "f")
	createVolume(t, vol, "8M")
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-client-ca", pki.CAFile}, "--tls-client-ca needs --tls-cert and --tls-key"},
		{[]string{"--tls-cert", pki.CertFile, "--tls-key", pki.KeyFile, "--tls-client-ca", notPEM}, "no PEM certificate"},
		{[]string{"--tls-cert", pki.CertFile, "--tls-key", pki.KeyFile, "--tls-client-ca", notPEM + ".missing"}, "read --tls-client-ca"},
		{[]string{"--max-conns", "0"}, "--max-conns 0: want at least 1"},
		{[]string{"--handshake-timeout", "0s"}, "--handshake-timeout 0s: want a positive duration"},
	} {
		args := append([]string{"serve", "--listen", "unix:" + filepath.Join(t.TempDir(), "s.sock"), "--no-cache"}, c.args...)
		r := runServeBriefly(t, append(args, vol)...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("want exit 1 saying %q:\n%s", c.want, r)
		}
	}

	s := startServe(t, vol, "--listen", "tcp:0.0.0.0:0")
	if !s.StderrHas("WITHOUT TLS") || !strings.Contains(s.Stderr(), "listen=tcp:0.0.0.0:0") {
		t.Errorf("no warning naming the non-loopback plaintext listener:\n%s", s.Stderr())
	}
	if n := strings.Count(s.Stderr(), "WITHOUT TLS"); n != 1 {
		t.Errorf("%d plaintext warnings, want 1:\n%s", n, s.Stderr())
	}
	s.StopOK()
	l := startServe(t, vol, "--listen", "tcp:127.0.0.1:0")
	l.StopOK()
	if strings.Contains(l.Stderr(), "WITHOUT TLS") {
		t.Errorf("plaintext warning for a loopback listener:\n%s", l.Stderr())
	}
}
