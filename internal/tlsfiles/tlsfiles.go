// Package tlsfiles builds TLS configurations from the PEM files a command
// line names. serve's NBD server and the agent's API take the same flags
// (--tls-cert, --tls-key, --tls-client-ca) and must refuse the same
// mistakes the same way, so the loading lives here once; the errors name
// those flags.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// CertPool reads the PEM certificates in the file name. A file holding
// none is an error naming it, not an empty pool that would trust nobody.
func CertPool(name string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", name)
	}
	return pool, nil
}

// ErrClientCANeedsCert: a client CA was given without the server's own
// certificate, so there would be no TLS to ask client certificates in.
var ErrClientCANeedsCert = errors.New("--tls-client-ca needs --tls-cert and --tls-key")

// Server returns the configuration of a TLS server presenting the key pair
// in certFile and keyFile (TLS 1.2 at least). With clientCAFile, clients
// must present a certificate it signed. Without certFile it returns nil
// (no TLS), unless clientCAFile is set: ErrClientCANeedsCert.
func Server(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" {
		if clientCAFile != "" {
			return nil, ErrClientCANeedsCert
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair (--tls-cert, --tls-key): %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pool, err := CertPool(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read --tls-client-ca: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
