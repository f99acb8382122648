package etcdcoord

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/urldisk/urldisk/internal/tlsfiles"
)

// ErrBadURL: the --coord URL is not
// etcd://[USER@]HOST:PORT[,HOST:PORT...]/PREFIX[?OPTIONS].
var ErrBadURL = errors.New("bad etcd coordination URL")

// EnvPassword holds the etcd user's password when the URL names a user and
// no password-file.
const EnvPassword = "URLDISK_ETCD_PASSWORD"

const urlForm = "want etcd://[USER@]HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=FILE&cert=FILE&key=FILE&password-file=FILE]"

// Config is a parsed --coord URL. It never holds a password: that is read
// when connecting, from PasswordFile or $URLDISK_ETCD_PASSWORD, so that it
// appears in no URL, flag, log line or error.
type Config struct {
	Endpoints []string // http://HOST:PORT, or https:// with TLS
	Prefix    string   // "" (the root) or ending with "/"
	// User is the etcd user to authenticate as; "" for none.
	User string
	// CAFile (cacert=) turns TLS on and is the CA the members' certificates
	// are checked against; CertFile and KeyFile (cert=, key=) are the
	// client certificate for members that require one. tls=1 turns TLS on
	// with the system's CAs.
	CAFile, CertFile, KeyFile string
	TLS                       bool
	// PasswordFile (password-file=) holds User's password.
	PasswordFile string
}

// ParseURL parses etcd://[USER@]h1:2379,h2:2379/prefix[?options]. Options:
// cacert, cert, key (PEM files; any of them turns TLS on), tls=1 (TLS with
// the system's CAs), password-file. A password in the URL is refused
// without being echoed.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold credentials
		}
		return Config{}, fmt.Errorf("%w: %v: %s", ErrBadURL, err, urlForm)
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			// Never echo it: credentials do not go in URLs, logs or errors.
			return Config{}, fmt.Errorf("%w: etcd://%s: a password in the URL is not accepted: use $%s or password-file=", ErrBadURL, u.Host, EnvPassword)
		}
	}
	// Errors show the URL without user and query: a password someone put
	// in the query (password=) must not be echoed either.
	shown := u.Scheme + "://" + u.Host + u.Path
	if u.Scheme != "etcd" || u.Host == "" {
		return Config{}, fmt.Errorf("%w: %q: %s", ErrBadURL, shown, urlForm)
	}
	var cfg Config
	if u.User != nil {
		cfg.User = u.User.Username()
		if cfg.User == "" {
			return Config{}, fmt.Errorf("%w: %q: empty user name", ErrBadURL, shown)
		}
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %q: query: %v", ErrBadURL, shown, err)
	}
	for k, vs := range q {
		if len(vs) != 1 || vs[0] == "" {
			return Config{}, fmt.Errorf("%w: %q: option %s wants one non-empty value", ErrBadURL, shown, k)
		}
		v := vs[0]
		switch k {
		case "cacert":
			cfg.CAFile, cfg.TLS = v, true
		case "cert":
			cfg.CertFile, cfg.TLS = v, true
		case "key":
			cfg.KeyFile, cfg.TLS = v, true
		case "tls":
			if v != "1" && v != "0" {
				return Config{}, fmt.Errorf("%w: %q: tls=%s: want 1 or 0", ErrBadURL, shown, v)
			}
			cfg.TLS = cfg.TLS || v == "1"
		case "password-file":
			cfg.PasswordFile = v
		default:
			return Config{}, fmt.Errorf("%w: %q: unknown option %q (want cacert, cert, key, tls or password-file)", ErrBadURL, shown, k)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return Config{}, fmt.Errorf("%w: %q: cert= and key= go together", ErrBadURL, shown)
	}
	if cfg.PasswordFile != "" && cfg.User == "" {
		return Config{}, fmt.Errorf("%w: %q: password-file= without a user (etcd://USER@HOST:PORT/...)", ErrBadURL, shown)
	}
	scheme := "http://"
	if cfg.TLS {
		scheme = "https://"
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" || !strings.Contains(h, ":") {
			return Config{}, fmt.Errorf("%w: %q: endpoint %q: want HOST:PORT", ErrBadURL, shown, h)
		}
		cfg.Endpoints = append(cfg.Endpoints, scheme+h)
	}
	cfg.Prefix = strings.Trim(u.Path, "/")
	if cfg.Prefix != "" {
		cfg.Prefix += "/"
	}
	return cfg, nil
}

// tlsConfig loads the CA and client certificate files.
func (cfg Config) tlsConfig() (*tls.Config, error) {
	if !cfg.TLS {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pool, err := tlsfiles.CertPool(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA (cacert=): %w", err)
		}
		tc.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate (cert=, key=): %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// password reads User's password from PasswordFile or the environment.
func (cfg Config) password() (string, error) {
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("read etcd password (password-file=): %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", fmt.Errorf("etcd password file %s is empty", cfg.PasswordFile)
		}
		return pw, nil
	}
	pw := os.Getenv(EnvPassword)
	if pw == "" {
		return "", fmt.Errorf("etcd user %q has no password: set $%s or password-file= in the URL", cfg.User, EnvPassword)
	}
	return pw, nil
}

// clientConfig is the etcd client configuration cfg names.
func (cfg Config) clientConfig(ctx context.Context) (clientv3.Config, error) {
	cc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: 5 * time.Second, Context: context.WithoutCancel(ctx)}
	var err error
	if cc.TLS, err = cfg.tlsConfig(); err != nil {
		return cc, err
	}
	if cfg.User != "" {
		cc.Username = cfg.User
		if cc.Password, err = cfg.password(); err != nil {
			return cc, err
		}
	}
	return cc, nil
}

// Open connects to the etcd cluster raw names (see ParseURL) and checks it
// answers under the prefix, so that a wrong certificate, user or password
// is an error here rather than at the first heartbeat.
func Open(ctx context.Context, raw string, opts Options) (*Coord, error) {
	cfg, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	where := strings.Join(cfg.Endpoints, ",")
	cc, err := cfg.clientConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, err)
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, cfg.explain(err, cc.TLS))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(pctx, cfg.Prefix+"agents/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		cli.Close()
		who := ""
		if cfg.User != "" {
			who = " as " + cfg.User
		}
		return nil, fmt.Errorf("connect to etcd %s%s (prefix %q): %w", where, who, cfg.Prefix, cfg.explain(err, cc.TLS))
	}
	return New(cli, cfg.Prefix, opts), nil
}

// explain adds to a timeout why no member answered.
func (cfg Config) explain(err error, tc *tls.Config) error {
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return fmt.Errorf("%w: %s", err, cfg.diagnose(tc))
	}
	return err
}

// diagnose says why no member answered: the etcd client only reports the
// deadline, so a TLS handshake with the first member shows a wrong CA or a
// refused client certificate.
func (cfg Config) diagnose(tc *tls.Config) string {
	const hint = "no member answered (check the endpoints, and that cacert=, cert=, key= match how the members serve clients)"
	if tc == nil {
		return hint
	}
	addr := strings.TrimPrefix(cfg.Endpoints[0], "https://")
	tc = tc.Clone()
	tc.ServerName, _, _ = net.SplitHostPort(addr)
	d := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, tc)
	if err != nil {
		return fmt.Sprintf("TLS with %s: %v", addr, err)
	}
	defer conn.Close()
	// TLS 1.3 servers refuse a client certificate after the handshake:
	// the alert comes with the first read.
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Sprintf("TLS with %s: %v", addr, err)
	}
	return hint
}
