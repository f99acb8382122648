package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/tlsfiles"
)

// MinTokenLen is the shortest API token the agent accepts: the token is
// the only thing between the network and running commands on the host.
const MinTokenLen = 16

// ErrWeakToken is returned for a token shorter than MinTokenLen.
var ErrWeakToken = errors.New("API token too short")

// checkToken refuses a token too short to resist guessing. The token
// itself never appears in the error.
func checkToken(token string) error {
	if len(token) < MinTokenLen {
		return fmt.Errorf("agent: %w: %d bytes, want at least %d (e.g. head -c 32 /dev/urandom | base64 > token)", ErrWeakToken, len(token), MinTokenLen)
	}
	return nil
}

// ReadTokenFile reads an API token from path (surrounding white space
// dropped). If the file is readable by group or others it logs a warning
// on log: anyone who can read it can run commands through every agent.
func ReadTokenFile(path string, log *slog.Logger) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("read token file: %s is empty", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o044 != 0 && log != nil {
		log.Warn("the API token file is readable by other users, who can then run commands through the agents; run chmod 600 on it",
			"path", path, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return t, nil
}

// NewHTTPClient returns a client for agents' TCP APIs. With caFile (PEM)
// it trusts only those CAs for https:// agents; without, the system's.
// With certFile and keyFile it presents that client certificate (agents
// that demand mutual TLS). Proxies are never used: the API token must go
// to the agent only.
func NewHTTPClient(caFile, certFile, keyFile string) (*http.Client, error) {
	tr := &http.Transport{Proxy: nil}
	if caFile == "" && certFile == "" && keyFile == "" {
		return &http.Client{Transport: tr}, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := tlsfiles.CertPool(caFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// serverTLS loads the API's certificate, or returns nil without one.
// With TLSClientCA, clients must present a certificate it signed.
func (c *Config) serverTLS() (*tls.Config, error) {
	cfg, err := tlsfiles.Server(c.TLSCert, c.TLSKey, c.TLSClientCA)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return cfg, nil
}

// warnCleartext logs once if the API listens beyond this host without
// TLS: the token and the requests then cross the network readable.
func warnCleartext(log *slog.Logger, ln net.Listener, tlsOn bool) {
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok || tlsOn || addr.IP.IsLoopback() {
		return
	}
	log.Warn("INSECURE: the agent API listens on a non-loopback address without TLS; the API token and every request cross the network in clear text (use --tls-cert and --tls-key, or listen on 127.0.0.1 or a unix socket)",
		"listen", addr.String())
}

// runAs is the resolved user of a machine's workload.
type runAs struct {
	cred *syscall.Credential // nil: the agent's own user
	home string
}

// resolveRunAs looks up spec.RunAs on this host. Running a workload as
// another user needs root; refusing otherwise beats starting it as the
// agent's user, which the spec asked not to.
func resolveRunAs(spec string) (runAs, error) {
	if spec == "" {
		return runAs{}, nil
	}
	if os.Geteuid() != 0 {
		return runAs{}, fmt.Errorf("run-as %q: the agent must run as root to start workloads as another user (it runs as uid %d)", spec, os.Geteuid())
	}
	if u, g, ok := strings.Cut(spec, ":"); ok {
		uid, err1 := strconv.ParseUint(u, 10, 32)
		gid, err2 := strconv.ParseUint(g, 10, 32)
		if err1 != nil || err2 != nil {
			return runAs{}, fmt.Errorf("%w: run-as %q: want a user name or UID:GID", fleet.ErrInvalid, spec)
		}
		// Groups empty: the workload must not keep the agent's groups.
		return runAs{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, home: "/"}, nil
	}
	usr, err := user.Lookup(spec)
	if err != nil {
		return runAs{}, fmt.Errorf("run-as: look up user: %w", err)
	}
	uid, _ := strconv.ParseUint(usr.Uid, 10, 32)
	gid, _ := strconv.ParseUint(usr.Gid, 10, 32)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if gids, err := usr.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return runAs{cred: cred, home: usr.HomeDir}, nil
}

// machineDirs prepares a machine's socket directory (sockDir: fresh, so
// no stale socket or planted file survives) and its log and working
// directory (dir), both private to the workload's user: a workload run as
// its own user reaches its own disk and nothing else.
func machineDirs(ra runAs, sockDir, dir string) error {
	if err := os.RemoveAll(sockDir); err != nil {
		return fmt.Errorf("clear machine socket directory: %w", err)
	}
	// A previous run as another user left dir owned by that user: take it
	// back before checking it (only root can, and only root ran one).
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() && os.Geteuid() == 0 {
		if err := os.Lchown(dir, os.Getuid(), os.Getgid()); err != nil {
			return fmt.Errorf("reclaim machine directory: %w", err)
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check machine directory: %w", err)
	}
	if err := rundir.Ensure(rundir.Private, sockDir); err != nil {
		return err
	}
	if err := rundir.Ensure(rundir.Private, dir); err != nil {
		return err
	}
	if ra.cred == nil {
		return nil
	}
	for _, d := range []string{sockDir, dir} {
		if err := rundir.Chown(d, int(ra.cred.Uid), int(ra.cred.Gid)); err != nil {
			return err
		}
	}
	return nil
}

// shareSocket makes a listening unix socket usable by the workload's user
// only (0600; owned by that user when it runs as another).
func shareSocket(path string, ra runAs) error {
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("set mode of socket: %w", err)
	}
	if ra.cred != nil {
		if err := os.Lchown(path, int(ra.cred.Uid), int(ra.cred.Gid)); err != nil {
			return fmt.Errorf("chown socket: %w", err)
		}
	}
	return nil
}

// stateDirMode is the mode of the state directory and its sock/ and
// machines/: private, except that an agent running as root (the only one
// that can run workloads as other users) lets them traverse to their own
// per-machine directories, which are private to them.
func stateDirMode() fs.FileMode {
	if os.Geteuid() == 0 {
		return rundir.Traverse
	}
	return rundir.Private
}

// stateDirs creates or checks the state directory and its sock/ and
// machines/ (refusing ones another user created or can write).
func (a *Agent) stateDirs() error {
	mode := stateDirMode()
	if err := rundir.Ensure(mode, a.cfg.StateDir, a.sockDir); err != nil {
		return fmt.Errorf("agent: state directory: %w", err)
	}
	if err := rundir.Ensure(mode, filepath.Join(a.cfg.StateDir, "machines")); err != nil {
		return fmt.Errorf("agent: state directory: %w", err)
	}
	return nil
}

// nbdSocketName is a machine's NBD socket in its socket directory.
const nbdSocketName = "nbd"

// machineSockDir is machine name's socket directory: its NBD socket and,
// for qemu, the QMP socket. Private to the machine's workload user.
func (a *Agent) machineSockDir(name string) string { return filepath.Join(a.sockDir, name) }
