package tlsfiles

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// handshake runs a TLS handshake between a server with cfg and a client
// trusting pki's CA, presenting a client certificate when withCert. It
// returns the server's error.
func handshake(t *testing.T, cfg *tls.Config, pki *testpki.PKI, withCert bool) error {
	t.Helper()
	cc := &tls.Config{ServerName: "localhost", RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}
	if withCert {
		cert, err := tls.LoadX509KeyPair(filepath.Join(pki.ClientDir, "client-cert.pem"), filepath.Join(pki.ClientDir, "client-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cc.Certificates = []tls.Certificate{cert}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	clientErr := make(chan error, 1)
	go func() {
		c := tls.Client(b, cc)
		err := c.Handshake()
		if err == nil {
			// TLS 1.3 clients finish before the server checks their
			// certificate: read to see the server's verdict.
			_, err = c.Read(make([]byte, 1))
		}
		b.Close()
		clientErr <- err
	}()
	s := tls.Server(a, cfg)
	err := s.Handshake()
	if err == nil {
		_, err = s.Write([]byte{1})
	}
	a.Close()
	<-clientErr
	return err
}

func TestServer(t *testing.T) {
	pki := testpki.New(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}

	if cfg, err := Server("", "", ""); cfg != nil || err != nil {
		t.Fatalf("Server without files = %v, %v; want nil, nil (no TLS)", cfg, err)
	}
	for _, c := range []struct {
		name                string
		cert, key, clientCA string
		want                string
	}{
		{"client CA without a certificate", "", "", pki.CAFile, "--tls-client-ca needs --tls-cert and --tls-key"},
		{"missing key", pki.CertFile, filepath.Join(dir, "none.pem"), "", "load TLS key pair (--tls-cert, --tls-key)"},
		{"key of another certificate", pki.CAFile, pki.KeyFile, "", "load TLS key pair"},
		{"client CA not PEM", pki.CertFile, pki.KeyFile, notPEM, "read --tls-client-ca: no PEM certificate in " + notPEM},
		{"client CA missing", pki.CertFile, pki.KeyFile, notPEM + ".missing", "read --tls-client-ca: open " + notPEM + ".missing"},
	} {
		cfg, err := Server(c.cert, c.key, c.clientCA)
		if err == nil || cfg != nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Server = %v, %v; want an error saying %q", c.name, cfg, err, c.want)
		}
	}
	if _, err := Server("", "", pki.CAFile); !errors.Is(err, ErrClientCANeedsCert) {
		t.Errorf("client CA without a certificate: %v, want ErrClientCANeedsCert", err)
	}

	// A server certificate alone: any client that trusts it connects.
	cfg, err := Server(pki.CertFile, pki.KeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.NoClientCert {
		t.Errorf("server config: min version %x, client auth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	if err := handshake(t, cfg, pki, false); err != nil {
		t.Errorf("handshake without client certificate, none asked: %v", err)
	}

	// With a client CA, only clients with a certificate it signed.
	cfg, err = Server(pki.CertFile, pki.KeyFile, pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cfg, pki, true); err != nil {
		t.Errorf("handshake with a client certificate the CA signed: %v", err)
	}
	if err := handshake(t, cfg, pki, false); err == nil {
		t.Error("handshake without a client certificate succeeded; want it refused")
	}
}

func TestCertPool(t *testing.T) {
	pki := testpki.New(t)
	pool, err := CertPool(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if !pool.Equal(pki.Pool) {
		t.Error("CertPool of the CA file differs from the CA's pool")
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CertPool(empty); err == nil || !strings.Contains(err.Error(), "no PEM certificate in "+empty) {
		t.Errorf("CertPool of an empty file: %v, want an error naming it", err)
	}
	if _, err := CertPool(empty + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CertPool of a missing file: %v, want ErrNotExist", err)
	}
}
