package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// DriverName is the CSI driver name (CSIDriver object, StorageClass
// provisioner).
const DriverName = "urldisk.csi.urldisk.io"

// Config configures a Driver.
type Config struct {
	// Endpoint is where the gRPC server listens: unix:///path/csi.sock
	// (or unix:/path); a stale socket file is removed.
	Endpoint string
	// NodeID names this node (NodeGetInfo); required with Node.
	NodeID string
	// Controller and Node select the services served (Identity always).
	Controller, Node bool
	// StateDir holds what the node staged (one directory per volume:
	// state file, FUSE mountpoint, serve socket); required with Node.
	StateDir string
	// CacheDir is the parent of the per-volume read caches; default
	// StateDir/cache.
	CacheDir string
	// Serve is the command that runs `urldisk serve` (argv before serve's
	// own arguments); default this executable and "serve".
	Serve []string
	// Version is reported by GetPluginInfo.
	Version string
	// Logger receives events; nil: slog.Default().
	Logger *slog.Logger
}

// Driver is a CSI plugin. Its methods are safe for concurrent use.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg Config
	log *slog.Logger

	poolsMu sync.Mutex
	// pools this process was asked about, with the credentials last given
	// for each, so that ListSnapshots without a filter (which names no
	// pool) lists them; guarded by poolsMu.
	pools map[string]map[string]string

	locks keyedMutex // one operation at a time per volume or snapshot name
}

// New checks cfg and returns a Driver.
func New(cfg Config) (*Driver, error) {
	if !cfg.Controller && !cfg.Node {
		return nil, errors.New("csi driver: serve at least one of --controller and --node")
	}
	if cfg.Node {
		if cfg.NodeID == "" {
			return nil, errors.New("csi driver: --node-id is required with --node")
		}
		if cfg.StateDir == "" {
			return nil, errors.New("csi driver: --state-dir is required with --node")
		}
		if !filepath.IsAbs(cfg.StateDir) {
			return nil, fmt.Errorf("csi driver: --state-dir %q must be absolute", cfg.StateDir)
		}
		if cfg.CacheDir == "" {
			cfg.CacheDir = filepath.Join(cfg.StateDir, "cache")
		}
		if len(cfg.Serve) == 0 {
			exe, err := os.Executable()
			if err != nil {
				return nil, fmt.Errorf("csi driver: find own executable for serve: %w", err)
			}
			cfg.Serve = []string{exe, "serve"}
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	return &Driver{cfg: cfg, log: cfg.Logger, pools: make(map[string]map[string]string)}, nil
}

// Listen opens the endpoint's unix socket, removing a stale one first.
func Listen(endpoint string) (net.Listener, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", endpoint, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listen on %s: remove stale socket: %w", endpoint, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", endpoint, err)
	}
	return l, nil
}

// socketPath is the path of a unix:// endpoint.
func socketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: want unix:///path/to/csi.sock", endpoint)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if u.Host != "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: want an absolute socket path, unix:///path/to/csi.sock", endpoint)
	}
	return p, nil
}

// Serve serves the driver's services on l until ctx is done, then stops
// gracefully (in-flight calls finish).
func (d *Driver) Serve(ctx context.Context, l net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCall))
	csi.RegisterIdentityServer(srv, d)
	if d.cfg.Controller {
		csi.RegisterControllerServer(srv, d)
	}
	if d.cfg.Node {
		csi.RegisterNodeServer(srv, d)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		srv.GracefulStop()
	}()
	err := srv.Serve(l)
	<-stopped
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve csi: %w", err)
	}
	return nil
}

// logCall logs each call's method and outcome; requests are not logged
// (they carry secrets).
func (d *Driver) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	if err != nil {
		d.log.Info("csi call failed", "method", method, "err", err)
	} else {
		d.log.Debug("csi call", "method", method)
	}
	return resp, err
}

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: d.cfg.Version}, nil
}

// GetPluginCapabilities: a controller service, offline expansion; volumes reachable from every
// node (no topology).
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	if d.cfg.Controller {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}})
	}
	// Offline: a staged device does not see a resize (expand.go).
	caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_OFFLINE}}})
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe: the driver is ready once it serves.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// lockedPool takes the driver's lock called key, then opens pool with the
// call's secrets; done closes the pool and releases the lock.
func (d *Driver) lockedPool(ctx context.Context, key, pool string, secrets map[string]string) (*volume.Pool, func(), error) {
	unlock, err := d.locks.lock(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	p, done, err := d.openPool(ctx, pool, secrets)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return p, func() { done(); unlock() }, nil
}

// openPool opens pool with the request's credentials and remembers it for
// ListSnapshots. The caller closes the returned pool's store with done.
func (d *Driver) openPool(ctx context.Context, pool string, secrets map[string]string) (p *volume.Pool, done func(), err error) {
	creds, err := credentials(pool, secrets)
	if err != nil {
		return nil, nil, err
	}
	o := objstore.Opener{S3Credentials: creds}
	store, err := o.Open(ctx, pool)
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "open pool: %v", err)
	}
	p, err = volume.OpenPool(ctx, store, volume.PoolOptions{Logger: d.log})
	if err != nil {
		store.Close()
		if errors.Is(err, volume.ErrNoPool) {
			return nil, nil, status.Errorf(codes.FailedPrecondition, "%s: no urldisk pool there (create it with `urldisk pool init`)", objstore.Redact(pool))
		}
		return nil, nil, statusOf(err, "open pool "+objstore.Redact(pool))
	}
	d.poolsMu.Lock()
	d.pools[pool] = secrets
	d.poolsMu.Unlock()
	return p, func() { store.Close() }, nil
}

// knownPools returns the pools this process was asked about and the
// credentials last given for each.
func (d *Driver) knownPools() map[string]map[string]string {
	d.poolsMu.Lock()
	defer d.poolsMu.Unlock()
	m := make(map[string]map[string]string, len(d.pools))
	for k, v := range d.pools {
		m[k] = v
	}
	return m
}

// statusOf maps an engine error to the CSI code the spec names for it.
func statusOf(err error, doing string) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, volume.ErrNotFound), errors.Is(err, errNoSuchID):
		code = codes.NotFound
	case errors.Is(err, volume.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, volume.ErrInvalid), errors.Is(err, objstore.ErrBadURL):
		code = codes.InvalidArgument
	case errors.Is(err, volume.ErrNoConditionalCreate):
		code = codes.FailedPrecondition
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Errorf(code, "%s: %v", doing, err)
}

// keyedMutex serialises operations on one key (a volume or snapshot
// name): the CO retries calls that time out, and two concurrent
// CreateVolume calls for one name must not both create.
type keyedMutex struct {
	mu   sync.Mutex
	held map[string]chan struct{} // key → closed when released; guarded by mu
}

// lock waits until key is free or ctx is done, and returns the unlock.
func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	for {
		k.mu.Lock()
		if k.held == nil {
			k.held = make(map[string]chan struct{})
		}
		ch, busy := k.held[key]
		if !busy {
			ch = make(chan struct{})
			k.held[key] = ch
			k.mu.Unlock()
			return func() {
				k.mu.Lock()
				delete(k.held, key)
				k.mu.Unlock()
				close(ch)
			}, nil
		}
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, status.Errorf(codes.Aborted, "another operation on %s is in progress", key)
		}
	}
}
