// Package testpki makes a throwaway CA, a server certificate it signed
// (valid for 127.0.0.1 and localhost) and a client certificate, as PEM
// files, for tests of TLS listeners run as real processes or configured by
// file name.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is the files of a test CA and a server certificate.
type PKI struct {
	// CAFile holds the CA certificate; CertFile and KeyFile the server's
	// certificate and private key. All PEM, in a directory of t's.
	CAFile, CertFile, KeyFile string
	// Pool holds the CA, for in-process clients.
	Pool *x509.CertPool
	// CertsDir and ClientDir are libnbd/qemu tls-certificates
	// directories: CertsDir holds only ca-cert.pem (a client without a
	// certificate), ClientDir also client-cert.pem and client-key.pem, a
	// client certificate the CA signed.
	CertsDir, ClientDir string
}

// New makes a CA and a server certificate valid for a day.
func New(t testing.TB) *PKI {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "urldisk test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(err)
	caCert, err := x509.ParseCertificate(caDER)
	must(err)
	// issue signs a leaf certificate for a fresh key with the CA.
	issue := func(serial int64, name string, usage x509.ExtKeyUsage, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		tmpl.SerialNumber, tmpl.Subject = big.NewInt(serial), pkix.Name{CommonName: name}
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
		tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{usage}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		must(err)
		return der, key
	}
	der, key := issue(2, "localhost", x509.ExtKeyUsageServerAuth,
		&x509.Certificate{DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}})
	keyDER, err := x509.MarshalECPrivateKey(key)
	must(err)
	dir := t.TempDir()
	p := &PKI{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), Pool: x509.NewCertPool()}
	p.Pool.AddCert(caCert)
	must(os.WriteFile(p.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644))
	must(os.WriteFile(p.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	must(os.WriteFile(p.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))

	cder, ckey := issue(3, "urldisk test client", x509.ExtKeyUsageClientAuth, &x509.Certificate{})
	ckeyDER, err := x509.MarshalPKCS8PrivateKey(ckey)
	must(err)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	p.CertsDir, p.ClientDir = filepath.Join(dir, "nbd-certs"), filepath.Join(dir, "nbd-client")
	for _, d := range []string{p.CertsDir, p.ClientDir} {
		must(os.Mkdir(d, 0o700))
		must(os.WriteFile(filepath.Join(d, "ca-cert.pem"), caPEM, 0o644))
	}
	must(os.WriteFile(filepath.Join(p.ClientDir, "client-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cder}), 0o644))
	must(os.WriteFile(filepath.Join(p.ClientDir, "client-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ckeyDER}), 0o600))
	return p
}
