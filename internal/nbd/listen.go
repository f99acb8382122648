package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Listen opens a listener from a spec: "unix:/path/to.sock" or
// "tcp:HOST:PORT" (e.g. "tcp:127.0.0.1:10809"; port 0 picks a free one).
// A stale unix socket file (one nobody accepts on) is removed first; a live
// one is an error, as is a non-socket file at that path. The unix socket
// file is removed when the listener is closed.
func Listen(spec string) (net.Listener, error) {
	network, addr, ok := strings.Cut(spec, ":")
	if !ok || addr == "" {
		return nil, fmt.Errorf("nbd: listen %q: want unix:/path or tcp:host:port", spec)
	}
	switch network {
	case "unix":
		if err := removeStaleSocket(addr); err != nil {
			return nil, fmt.Errorf("nbd: listen %q: %w", spec, err)
		}
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen %q: %w", spec, err)
		}
		return ln, nil
	case "tcp":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen %q: %w", spec, err)
		}
		return ln, nil
	}
	return nil, fmt.Errorf("nbd: listen %q: unknown network %q (want unix or tcp)", spec, network)
}

// removeStaleSocket removes path if it is a unix socket nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a running server", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// URI returns the NBD URI a client uses to reach export name on a listener
// address: nbd+unix:///NAME?socket=/path for unix sockets,
// nbd://HOST:PORT/NAME for TCP, and the nbds variants when useTLS.
func URI(addr net.Addr, name string, useTLS bool) (string, error) {
	scheme := "nbd"
	if useTLS {
		scheme = "nbds"
	}
	path := "/" + uriEscape(name, false)
	switch a := addr.(type) {
	case *net.UnixAddr:
		return scheme + "+unix://" + path + "?socket=" + uriEscape(a.Name, true), nil
	case *net.TCPAddr:
		return scheme + "://" + a.String() + path, nil
	}
	return "", fmt.Errorf("nbd: no URI for %s address %s", addr.Network(), addr)
}

// uriEscape percent-encodes s for a URI path or query value, leaving
// unreserved characters (and "/" when keepSlash) as they are.
func uriEscape(s string, keepSlash bool) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/' && keepSlash:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}
