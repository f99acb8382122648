package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/urldisk/urldisk/internal/agent"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/fleet/etcdcoord"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/units"
)

// Environment variables of the fleet commands.
const (
	envFleet = "URLDISK_FLEET"
	envToken = "URLDISK_TOKEN"
	envTLSCA = "URLDISK_TLS_CA"
	envCoord = "URLDISK_COORD"
)

// fleetFlags are the flags every fleet command shares.
type fleetFlags struct {
	fleetURL                    string
	coordURL                    string
	tokenFile                   string
	tlsCA                       string
	tlsClientCert, tlsClientKey string
}

func (f *fleetFlags) register(fs *pflag.FlagSet, withToken bool) {
	fs.StringVar(&f.fleetURL, "fleet", "", "fleet store URL (usually the pool URL); default $"+envFleet)
	fs.StringVar(&f.coordURL, "coord", "", "coordinate through etcd instead of the fleet store: etcd://[USER@]HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=FILE&cert=FILE&key=FILE&password-file=FILE] (password only from the file or $"+etcdcoord.EnvPassword+"); default $"+envCoord)
	if withToken {
		fs.StringVar(&f.tokenFile, "token-file", "", "file holding the agents' API token; default $"+envToken)
		fs.StringVar(&f.tlsCA, "tls-ca", "", "CA certificate (PEM) trusted for agents' https:// APIs; default $"+envTLSCA+", else the system's")
		fs.StringVar(&f.tlsClientCert, "tls-client-cert", "", "client certificate (PEM) presented to agents that demand mutual TLS")
		fs.StringVar(&f.tlsClientKey, "tls-client-key", "", "private key (PEM) of --tls-client-cert")
	}
}

// url returns the fleet URL from the flag or the environment.
func (f *fleetFlags) url() (string, error) {
	u := f.fleetURL
	if u == "" {
		u = os.Getenv(envFleet)
	}
	if u == "" {
		return "", fmt.Errorf("no fleet: pass --fleet URL or set $%s", envFleet)
	}
	return u, nil
}

// coord returns the etcd URL from --coord or the environment; "" means
// the fleet store coordinates.
func (f *fleetFlags) coord() string {
	if f.coordURL != "" {
		return f.coordURL
	}
	return os.Getenv(envCoord)
}

// open opens the fleet's coordination service: etcd if --coord names it,
// else the fleet store (as seen by host self, "" for the CLI, whose
// membership view is refreshed every timeout; 0 takes the defaults). It
// returns what to close when done and a name for messages.
func (f *fleetFlags) open(ctx context.Context, g *globals, self string, timeout time.Duration) (fleet.Coord, io.Closer, string, error) {
	if u := f.coord(); u != "" {
		c, err := etcdcoord.Open(ctx, u, etcdcoord.Options{Self: self, LeaseTTL: timeout, MembershipEvery: timeout, Logger: g.log})
		if err != nil {
			return nil, nil, "", fmt.Errorf("open coordination: %w", err) // err names the URL, without credentials
		}
		return c, c, u, nil
	}
	u, err := f.url()
	if err != nil {
		return nil, nil, "", err
	}
	store, err := objstore.Open(ctx, u)
	if err != nil {
		return nil, nil, "", fmt.Errorf("open fleet %s: %w", objstore.Redact(u), err)
	}
	return fleet.NewWithOptions(store, fleet.Options{Logger: g.log, MembershipEvery: timeout}), store, objstore.Redact(u), nil
}

// token returns the API token from --token-file or $URLDISK_TOKEN; "" if
// neither is given. It warns on log if the file is readable by others.
// The token itself never appears in errors.
func (f *fleetFlags) token(log *slog.Logger) (string, error) {
	if f.tokenFile != "" {
		t, err := agent.ReadTokenFile(f.tokenFile, log)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		return t, nil
	}
	return os.Getenv(envToken), nil
}

// httpClient is the client for agents' TCP APIs: it trusts --tls-ca and
// presents --tls-client-cert.
func (f *fleetFlags) httpClient() (*http.Client, error) {
	return agent.NewHTTPClient(f.caFile(), f.tlsClientCert, f.tlsClientKey)
}

// caFile is the CA trusted for agents' https:// APIs: --tls-ca or
// $URLDISK_TLS_CA ("" for the system's).
func (f *fleetFlags) caFile() string {
	if f.tlsCA != "" {
		return f.tlsCA
	}
	return os.Getenv(envTLSCA)
}

type agentOptions struct {
	fleetFlags
	id                string
	cacheDir          string
	cacheSize         string
	listen            string
	stateDir          string
	tlsCert, tlsKey   string
	tlsClientCA       string
	tokensFile        string
	metricsListen     string
	heartbeatTimeout  time.Duration
	heartbeatInterval time.Duration
	stopGrace         time.Duration
	stopWait          time.Duration
	tracePages        int
	// storeTimeout and flushTimeout: as serve's (checkStallFlags).
	storeTimeout time.Duration
	flushTimeout time.Duration
}

func newAgentCommand(g *globals) *cobra.Command {
	o := &agentOptions{}
	cmd := command("agent --id HOST --fleet URL --cache DIR --listen tcp:HOST:PORT", "Run the per-host daemon: heartbeat, run the machines placed here, fail over dead hosts' machines",
		exactArgs(0, "no arguments"), func(ctx context.Context, out io.Writer, _ []string) error {
			return runAgent(ctx, out, g, o)
		})
	cmd.Long = `Run this host's agent until SIGTERM or SIGINT. It heartbeats into the fleet
store (<fleet>/fleet/agents/HOST), runs the machines whose placement names
this host (attaching each volume read-write, exporting it over NBD on a unix
socket, starting the process or qemu VM), moves them when their placement
changes, and reassigns the machines of hosts that stopped heartbeating.

The HTTP API (and /metrics, unless --metrics-listen moves it) requires a
token on every request, in the header only (never in a query string):
  Authorization: Bearer <token>
The fleet token comes from --token-file or $URLDISK_TOKEN (at least 16 bytes;
agents of one fleet share it and use it to reach each other). Whoever holds
it, or a machine-scoped token, can run any command on this host as the
agent's user (or, for machines with --run-as, as that user): treat them
like root passwords. Give clients scoped tokens instead (--tokens-file; make
them with "urldisk agent token"): read-only, machine operations, limited to
some machines. Every request that may change something is logged with the
token's name ("audit"). --tls-client-ca demands client certificates
(mutual TLS); agents and CLI commands then present --tls-client-cert. On a non-loopback --listen, give
--tls-cert and --tls-key so the token does not cross the network in clear;
clients then trust --tls-ca / $URLDISK_TLS_CA. On exit, machines are
stopped and their volumes flushed.`
	f := cmd.Flags()
	o.fleetFlags.register(f, true)
	f.StringVar(&o.id, "id", "", "this host's id in the fleet (required)")
	f.StringVar(&o.cacheDir, "cache", defaultCacheDir(), "host read-cache directory (one agent per directory)")
	f.StringVar(&o.cacheSize, "cache-size", "10G", "read-cache size bound")
	f.StringVar(&o.listen, "listen", "tcp:127.0.0.1:7410", "API listener: tcp:HOST:PORT or unix:/path")
	f.StringVar(&o.stateDir, "state-dir", "", "machine logs and sockets, private to this user (default $TMPDIR/urldisk-agent-ID)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM) for a tcp: API listener")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "demand client certificates signed by this CA (PEM): mutual TLS on the API")
	f.StringVar(&o.tokensFile, "tokens-file", "", "scoped API tokens besides the fleet token: lines of NAME SCOPE sha256:HEX [MACHINE-PATTERNS] (see urldisk agent-token)")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve /metrics without a token on this listener (tcp:HOST:PORT or unix:/path) instead of on the API")
	f.DurationVar(&o.heartbeatTimeout, "heartbeat-timeout", 10*time.Second, "a host silent this long is dead and its machines fail over")
	f.DurationVar(&o.heartbeatInterval, "heartbeat-interval", 0, "heartbeat period (default: a fifth of the timeout)")
	f.DurationVar(&o.stopGrace, "stop-grace", 30*time.Second, "how long a machine may take to stop before it is killed")
	f.DurationVar(&o.stopWait, "stop-wait", 0, "how long a moved machine's new host waits for the old one to stop (default: timeout + stop grace)")
	registerStallFlags(f, &o.storeTimeout, &o.flushTimeout)
	f.IntVar(&o.tracePages, "trace-pages", 4096, "recently used 64 KiB pages recorded per machine for prefetch on its next host (0 disables)")
	cmd.AddCommand(newAgentTokenCommand())
	return cmd
}

func newAgentTokenCommand() *cobra.Command {
	var scope string
	var machines []string
	cmd := command("token NAME --scope read|machine|admin [--machines PATTERN,...]", "Make a scoped API token: prints the token, then its line for --tokens-file",
		exactArgs(1, "a token name"), func(_ context.Context, out io.Writer, args []string) error {
			sc, err := agent.ParseScope(scope)
			if err != nil {
				return fmt.Errorf("--scope: %w", err)
			}
			token, line, err := agent.NewToken(args[0], sc, machines)
			if err != nil {
				return err
			}
			printf(out, "%s\n%s\n", token, line)
			return nil
		})
	cmd.Long = `token makes a random API token and prints two lines: the token (give it to
the client, e.g. in a file for --token-file; it is shown only here) and the
line to append to every agent's --tokens-file, which holds only the token's
SHA-256, never the token. Scopes: read (status, machines, metrics), machine
(also run, stop, start, migrate, rm, reconcile), admin (everything).
--machines limits a read or machine token to machines whose names match one
of the patterns (path.Match syntax, e.g. web-*): it sees and changes only
those. Agents re-read --tokens-file only when they restart.`
	cmd.Flags().StringVar(&scope, "scope", "", "read, machine or admin (required)")
	cmd.Flags().StringSliceVar(&machines, "machines", nil, "limit the token to machines matching these patterns")
	return cmd
}

func runAgent(ctx context.Context, out io.Writer, g *globals, o *agentOptions) error {
	if o.id == "" {
		return errors.New("agent: --id is required (this host's id in the fleet)")
	}
	if err := checkStallFlags("agent", o.storeTimeout, o.flushTimeout); err != nil {
		return err
	}
	token, err := o.token(g.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	size, err := units.ParseSize(o.cacheSize)
	if err != nil {
		return fmt.Errorf("--cache-size: %w", err)
	}
	var tokens []agent.Token
	if o.tokensFile != "" {
		if tokens, err = agent.ReadTokensFile(o.tokensFile); err != nil {
			return fmt.Errorf("--tokens-file: %w", err)
		}
	}
	timeout := o.heartbeatTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second // the agent's default
	}
	coord, closer, where, err := o.open(ctx, g, o.id, timeout)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer closer.Close()
	tracePages := o.tracePages
	if tracePages == 0 {
		tracePages = -1
	}
	a, err := agent.New(agent.Config{
		ID: o.id, Coord: coord, CacheDir: o.cacheDir, CacheSize: int64(size), StateDir: o.stateDir,
		Listen: o.listen, Token: token, TLSCert: o.tlsCert, TLSKey: o.tlsKey, TLSCA: o.caFile(),
		TLSClientCA: o.tlsClientCA, TLSClientCert: o.tlsClientCert, TLSClientKey: o.tlsClientKey,
		Tokens: tokens, MetricsListen: o.metricsListen,
		HeartbeatTimeout: o.heartbeatTimeout, HeartbeatInterval: o.heartbeatInterval,
		StopGrace: o.stopGrace, StopWait: o.stopWait, TracePages: tracePages,
		StoreTimeout: o.storeTimeout, FlushTimeout: o.flushTimeout, Logger: g.log,
		Key: g.keySource(),
	})
	if err != nil {
		return err
	}
	return a.Run(ctx, func(api string) {
		printf(out, "agent %s ready: api %s, fleet %s\n", o.id, api, where)
	})
}
