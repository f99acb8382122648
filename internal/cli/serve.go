package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/export"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/tlsfiles"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

type serveOptions struct {
	listen      string
	socketMode  os.FileMode // of a unix listener
	readOnly    bool
	cacheDir    string
	cacheSize   string
	noCache     bool
	create      bool
	size        string
	tlsCert     string
	tlsKey      string
	tlsClientCA string
	maxConns    int
	handshake   time.Duration
	allow       []string
	stopTimeout time.Duration
	follow      time.Duration
	compact     time.Duration
	// storeTimeout and flushTimeout bound waits on a stalled object store
	// (volume.Options.StoreTimeout, FlushTimeout).
	storeTimeout time.Duration
	flushTimeout time.Duration
	// readahead and readaheadFill are sizes (volume.Options.ReadaheadBytes,
	// ReadaheadFillBytes); planServe parses them.
	readahead     string
	readaheadFill string
	// memoryLimit is --memory-limit, a size; planServe parses it.
	memoryLimit string
}

// defaultMemoryLimit is serve's Go soft memory limit when neither
// --memory-limit nor GOMEMLIMIT sets one. Without a limit the heap grows to
// twice what was live at the last GC (GOGC=100): a sequential writer keeps
// ~100 MiB live (the 64 MiB write buffer plus NBD payloads waiting for it),
// so serve peaked at 230-263 MiB; a lower GOGC bounds that too but doubled
// the GC's CPU on a sequential write, while the limit only adds collections
// when the heap nears it. Measured in BENCHMARKS.md.
const defaultMemoryLimit = 192 << 20

// parseNonNegSize parses flag's size value (units.ParseSize refuses a
// negative one) into an int64; 0 is allowed and means the default.
func parseNonNegSize(flag, s string) (int64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", flag, err)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("%s: %s is too large", flag, s)
	}
	return int64(n), nil
}

// registerStallFlags adds --store-timeout and --flush-timeout (serve and
// agent).
func registerStallFlags(f *pflag.FlagSet, storeTimeout, flushTimeout *time.Duration) {
	f.DurationVar(storeTimeout, "store-timeout", 30*time.Second, "deadline of one object-store request of a record upload or of a read (per 8 MiB); a request that gets no answer is cancelled and retried (a read fails with EIO after 4 attempts)")
	f.DurationVar(flushTimeout, "flush-timeout", 0, "fail a FLUSH with EIO after waiting this long for the object store; the data stays queued and a later FLUSH can succeed (0: wait as long as it takes)")
}

// checkStallFlags validates --store-timeout and --flush-timeout, which serve
// and agent share (volume.Options.StoreTimeout, FlushTimeout).
func checkStallFlags(cmd string, storeTimeout, flushTimeout time.Duration) error {
	if storeTimeout <= 0 {
		return fmt.Errorf("%s: --store-timeout must be positive, got %s", cmd, storeTimeout)
	}
	if flushTimeout < 0 {
		return fmt.Errorf("%s: --flush-timeout must be 0 (wait) or positive, got %s", cmd, flushTimeout)
	}
	return nil
}

// defaultCacheDir is the per-host cache: $XDG_CACHE_HOME/urldisk or
// ~/.cache/urldisk.
func defaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "urldisk")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "urldisk")
	}
	return filepath.Join(os.TempDir(), "urldisk-cache")
}

// defaultSocket is where serve listens when --listen is not given: in
// rundir.Base(), which runServe makes sure is ours and private.
func defaultSocket(name string) string {
	return "unix:" + filepath.Join(rundir.Base(), name+".sock")
}

func newServeCommand(g *globals) *cobra.Command {
	o := &serveOptions{}
	cmd := command("serve URL [URL...]", "Export volumes as block devices over NBD (export name = volume name)",
		serveArgs, func(ctx context.Context, out io.Writer, args []string) error {
			return runServe(ctx, out, g, o, args)
		})
	cmd.Long = `Export one or more volumes over NBD until SIGTERM or SIGINT, then finish
in-flight requests, flush every volume to the object store and exit 0.

By default serve listens on a unix socket and prints the NBD URI to use:
  qemu-system-x86_64 -drive file=nbd+unix:///NAME?socket=PATH,format=raw,...
  qemu-img info nbd+unix:///NAME?socket=PATH
  nbdfuse DIR nbd+unix:///NAME?socket=PATH   (then losetup DIR/nbd)

With --tls-cert/--tls-key every client must use TLS (NBD_OPT_STARTTLS);
plaintext is refused. --tls-client-ca also requires client certificates
signed by that CA.

Exit status: 0 after a clean stop (every volume flushed); 3 when every
read-write volume was fenced (another writer took it over: writes not yet
flushed are lost), logged once as "all read-write volumes fenced"; 1 on
any other error.`
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "", "unix:/path/to.sock or tcp:HOST:PORT (default: a unix socket under $XDG_RUNTIME_DIR or /tmp)")
	o.socketMode = 0o600
	f.Var(&socketModeValue{&o.socketMode}, "socket-mode", "mode of a unix --listen socket, octal (default 0600: only this user; e.g. 0660 for qemu in this group)")
	f.BoolVar(&o.readOnly, "read-only", false, "export read-only (no fencing; any number of hosts may do this)")
	f.StringVar(&o.cacheDir, "cache", defaultCacheDir(), "host read-cache directory")
	f.StringVar(&o.cacheSize, "cache-size", "10G", "read-cache size bound")
	f.BoolVar(&o.noCache, "no-cache", false, "run without a local cache")
	f.BoolVar(&o.create, "create", false, "create the pool and the volume if missing (needs --size)")
	f.StringVar(&o.size, "size", "", "size of a volume created by --create, e.g. 10G")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM) for TCP listeners")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "with --tls-cert: require client certificates signed by this CA (PEM)")
	f.IntVar(&o.maxConns, "max-conns", nbd.DefaultMaxConns, "most NBD connections open at once; more are closed at accept (also capped so 256 file descriptors stay for the store and cache)")
	f.DurationVar(&o.handshake, "handshake-timeout", nbd.DefaultHandshakeTimeout, "close a connection that has not finished the NBD handshake (TLS included) in this time")
	f.StringSliceVar(&o.allow, "allow", nil, "allow-list of export names (default: all served volumes)")
	f.DurationVar(&o.stopTimeout, "stop-timeout", time.Minute, "how long shutdown waits for in-flight requests and the final flush")
	f.DurationVar(&o.compact, "compact-every", 10*time.Minute, "compact sparsely-live records this often (0: never)")
	registerStallFlags(f, &o.storeTimeout, &o.flushTimeout)
	f.StringVar(&o.readahead, "readahead", "0", "memory bound of all sequential readers' readahead windows in flight (0: the default, 64M)")
	f.StringVar(&o.readaheadFill, "readahead-fill", "0", "how far into one sequential stream readahead fills the cache; beyond it a long pass does not evict the working set (0: the default, a quarter of --cache-size, at least 64M)")
	f.StringVar(&o.memoryLimit, "memory-limit", "", "Go soft memory limit: the GC works harder near it instead of letting the heap grow to twice the live data (default 192M unless $GOMEMLIMIT is set; 0: none)")
	f.DurationVar(&o.follow, "follow", 0, "with --read-only: poll the log this often and serve new flushed data (a read replica)")
	return cmd
}

// serveArgs wants at least one volume URL.
func serveArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("serve: expected at least one volume URL\nusage: %s", cmd.UseLine())
	}
	return nil
}

func runServe(ctx context.Context, out io.Writer, g *globals, o *serveOptions, args []string) error {
	log := g.log
	plan, err := planServe(o, args)
	if err != nil {
		return err
	}
	// Listen before attaching, so that a bad or busy --listen fails
	// without fencing anyone. Clients that connect meanwhile wait.
	ln, maxConns, err := serveListen(log, o, plan)
	if err != nil {
		return err
	}
	if plan.memoryLimit > 0 {
		// Restored on return: serve also runs inside the cli tests' process.
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(plan.memoryLimit))
	}
	c, err := openServeCache(log, o)
	if err != nil {
		ln.Close()
		return err
	}
	if c != nil {
		defer c.Close() // after the export's Shutdown: volumes read through it until closed
	}
	vols := make([]export.Volume, len(args))
	for i, raw := range args {
		vols[i] = export.Volume{Name: plan.names[i], Label: "urldisk " + objstore.Redact(raw), Open: func(ctx context.Context) (*volume.Volume, error) {
			v, _, err := attachForServe(ctx, g, o, raw, plan, c)
			return v, err
		}}
	}
	exp, err := export.Start(ctx, export.Config{
		Volumes:  vols,
		Listener: ln,
		NBD: nbd.Options{Allow: o.allow, TLSConfig: plan.tls, RequireTLS: plan.tls != nil,
			MaxConns: maxConns, HandshakeTimeout: o.handshake},
		DrainTimeout: o.stopTimeout,
		CloseTimeout: o.stopTimeout,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	for _, name := range exp.Names() {
		uri, err := exp.URI(name)
		if err != nil {
			exp.Shutdown(context.WithoutCancel(ctx)) // the URI error is the news
			return err
		}
		printf(out, "serving %s at %s\n", name, uri)
	}
	printf(out, "ready\n")

	select {
	case <-ctx.Done():
		log.Info("shutting down: finishing in-flight requests, then flushing")
	case <-exp.Fenced():
		log.Error("all read-write volumes fenced: another writer took over; refusing new connections and exiting", "exit_code", exitFenced)
		if err := exp.Shutdown(context.WithoutCancel(ctx)); err != nil {
			// Closing fenced volumes fails with ErrFenced: that is the
			// news already reported, not a second error.
			log.Debug("shutdown after fencing", "err", err)
		}
		return &exitCodeError{code: exitFenced, err: fmt.Errorf("serve: every read-write volume was fenced (another writer took over): %w", blockdev.ErrFenced)}
	case <-exp.Done():
		// The NBD server stopped by itself (its listener failed):
		// Shutdown returns why, and flushes what clients wrote.
		err := exp.Shutdown(context.WithoutCancel(ctx))
		if err == nil {
			err = errors.New("nbd server stopped")
		}
		return fmt.Errorf("serve: %w", err)
	}
	if err := exp.Shutdown(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	log.Info("stopped cleanly: every volume flushed")
	return nil
}

// servePlan is what planServe derived from serve's flags and arguments.
type servePlan struct {
	names      []string // export name of each argument
	createSize uint64   // with --create
	tls        *tls.Config
	// readahead and readaheadFill: --readahead and --readahead-fill in
	// bytes, 0 for the volume's default.
	readahead, readaheadFill int64
	// memoryLimit: the soft memory limit to set in bytes, 0 to leave the
	// runtime's (GOMEMLIMIT, or none).
	memoryLimit int64
}

// planServe checks the flags and the URLs before anything is touched:
// attaching read-write fences a volume's writer, and --create creates
// pools and volumes.
func planServe(o *serveOptions, args []string) (*servePlan, error) {
	plan := &servePlan{}
	switch {
	case o.create && o.size == "":
		return nil, fmt.Errorf("serve: --create needs --size (e.g. --size 10G)")
	case o.create:
		var err error
		if plan.createSize, err = units.ParseSize(o.size); err != nil {
			return nil, fmt.Errorf("--size: %w", err)
		}
	case o.size != "":
		return nil, fmt.Errorf("serve: --size only applies with --create")
	}
	switch {
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return nil, fmt.Errorf("serve: --tls-cert and --tls-key go together")
	case o.maxConns < 1:
		return nil, fmt.Errorf("serve: --max-conns %d: want at least 1", o.maxConns)
	case o.handshake <= 0:
		return nil, fmt.Errorf("serve: --handshake-timeout %v: want a positive duration", o.handshake)
	case o.follow > 0 && !o.readOnly:
		return nil, fmt.Errorf("serve: --follow needs --read-only")
	}
	if err := checkStallFlags("serve", o.storeTimeout, o.flushTimeout); err != nil {
		return nil, err
	}
	var err error
	if plan.readahead, err = parseNonNegSize("--readahead", o.readahead); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if plan.readaheadFill, err = parseNonNegSize("--readahead-fill", o.readaheadFill); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	switch {
	case o.memoryLimit != "":
		if plan.memoryLimit, err = parseNonNegSize("--memory-limit", o.memoryLimit); err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
	case os.Getenv("GOMEMLIMIT") == "":
		plan.memoryLimit = defaultMemoryLimit
	}
	if plan.tls, err = tlsfiles.Server(o.tlsCert, o.tlsKey, o.tlsClientCA); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	names := map[string]bool{}
	for _, raw := range args {
		ref, err := volref.Parse(raw)
		if err != nil {
			return nil, err
		}
		base, pt := ref.URL(), ref.Point
		if !pt.IsHead() && !o.readOnly {
			return nil, fmt.Errorf("serve %s: a point in history (@%s) can only be served with --read-only", objstore.Redact(base), pt)
		}
		if !pt.IsHead() && o.create {
			return nil, fmt.Errorf("serve %s: --create does not apply to a point in history", objstore.Redact(base))
		}
		name := ref.Name
		if names[name] {
			return nil, fmt.Errorf("serve: two volumes named %q; export names must be unique", name)
		}
		names[name] = true
		plan.names = append(plan.names, name)
	}
	return plan, nil
}

// serveListen opens the NBD listener of --listen (default: a socket named
// after the first volume in our private runtime directory), sets a unix
// socket's mode, and returns the connection limit that fits the process's
// file descriptors.
func serveListen(log *slog.Logger, o *serveOptions, plan *servePlan) (net.Listener, int, error) {
	spec := o.listen
	if spec == "" {
		spec = defaultSocket(plan.names[0])
		// Another local user could have created the directory first (under
		// a shared /tmp) and swap our socket for theirs: refuse it.
		if err := rundir.Ensure(rundir.Private, rundir.Base()); err != nil {
			return nil, 0, fmt.Errorf("serve: %w", err)
		}
	}
	ln, err := nbd.Listen(spec)
	if err != nil {
		return nil, 0, fmt.Errorf("serve: listen %s: %w", spec, err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok && plan.tls == nil && !a.IP.IsLoopback() {
		log.Warn("serving NBD over TCP on a non-loopback address WITHOUT TLS: anyone who can reach it can read and write the volumes (use --tls-cert/--tls-key)", "listen", spec, "addr", a.String())
	}
	maxConns := o.maxConns
	if fdLimit, err := nbd.RaiseFDLimit(); err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
	} else {
		maxConns = nbd.FitMaxConns(o.maxConns, fdLimit, fdReserve)
	}
	log.Info("nbd connection limits", "max_conns", maxConns, "handshake_timeout", o.handshake, "fd_reserve", fdReserve)
	if path, ok := strings.CutPrefix(spec, "unix:"); ok {
		// Whoever can connect can read and write the disk: by default only
		// this user (--socket-mode loosens it, e.g. for qemu run as another
		// user).
		if err := os.Chmod(path, o.socketMode); err != nil {
			ln.Close()
			return nil, 0, fmt.Errorf("serve: set mode of socket %s: %w", path, err)
		}
	}
	return ln, maxConns, nil
}

// openServeCache opens the host read cache; nil with --no-cache, or when
// the directory is unusable (the cache only saves GETs: serve without it
// rather than not at all, and say so).
func openServeCache(log *slog.Logger, o *serveOptions) (*cache.Cache, error) {
	if o.noCache {
		return nil, nil
	}
	size, err := units.ParseSize(o.cacheSize)
	if err != nil {
		return nil, fmt.Errorf("--cache-size: %w", err)
	}
	c, err := cache.Open(o.cacheDir, int64(size), cache.Options{Logger: log})
	switch {
	case errors.Is(err, cache.ErrLocked):
		return nil, fmt.Errorf("serve: %w (another urldisk process uses it: give this one its own --cache DIR, or --no-cache)", err)
	case errors.Is(err, cache.ErrUnusable):
		log.Warn("cache unusable; serving every read from the object store", "dir", o.cacheDir, "err", err)
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("serve: %w", err)
	}
	return c, nil
}

// fdReserve is how many file descriptors serve keeps out of the NBD
// connection limit for the object store's sockets, the cache and logs.
const fdReserve = 256

// exitFenced is serve's exit status when every read-write volume was
// fenced. Documented in serve --help and README.md.
const exitFenced = 3

// exitCodeError carries a process exit status other than 1 to Main.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }
func (e *exitCodeError) ExitCode() int { return e.code }

// attachForServe opens one volume URL for serving.
func attachForServe(ctx context.Context, g *globals, o *serveOptions, raw string, plan *servePlan, c *cache.Cache) (*volume.Volume, string, error) {
	ref, err := volref.Parse(raw)
	if err != nil {
		return nil, "", err
	}
	raw, pt, name := ref.URL(), ref.Point, ref.Name
	p, err := openPool(ctx, g, ref.Pool, o.create)
	if err != nil {
		return nil, "", err
	}
	if o.create {
		if _, err := p.Resolve(ctx, name); errors.Is(err, volume.ErrNotFound) {
			d, err := p.Create(ctx, name, volume.CreateOptions{Size: plan.createSize})
			if err != nil && !errors.Is(err, volume.ErrExists) {
				return nil, "", err
			}
			if err == nil {
				g.log.Info("created volume", "name", d.Name, "size", units.FormatSize(d.Size))
			}
		}
	}
	opts := volume.Options{ReadOnly: o.readOnly, Logger: g.log, Follow: o.follow, CompactEvery: o.compact,
		StoreTimeout: o.storeTimeout, FlushTimeout: o.flushTimeout,
		ReadaheadBytes: plan.readahead, ReadaheadFillBytes: plan.readaheadFill}
	if c != nil {
		opts.Cache = c
	}
	if !pt.IsHead() && !o.readOnly {
		return nil, "", fmt.Errorf("serve %s: a point in history (@%s) can only be served with --read-only", objstore.Redact(raw), pt)
	}
	if o.follow > 0 && !o.readOnly {
		return nil, "", fmt.Errorf("serve: --follow needs --read-only")
	}
	if !o.readOnly {
		// Attaching read-write fences the volume's writer: refuse before
		// that if a serve on this host holds it.
		d, err := p.Resolve(ctx, name)
		if err != nil {
			return nil, "", err
		}
		if err := control.InUse(d.ID); err != nil {
			return nil, "", fmt.Errorf("serve %s: %w", objstore.Redact(raw), err)
		}
	}
	v, err := p.OpenAt(ctx, name, pt, opts)
	if err != nil {
		return nil, "", err
	}
	return v, name, nil
}
