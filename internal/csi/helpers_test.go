package csi_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	urlcsi "github.com/urldisk/urldisk/internal/csi"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
	"github.com/urldisk/urldisk/internal/volume"
)

// urldiskBin is the urldisk binary the node's serve children run, built
// by TestMain.
var urldiskBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "urldisk-csi-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	urldiskBin = filepath.Join(dir, "urldisk")
	cmd := exec.Command("go", "build", "-o", urldiskBin, "github.com/urldisk/urldisk/cmd/urldisk")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "csi test: go build ./cmd/urldisk: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// requireNodeTools fails the test unless it runs as root with the tools
// the node service uses (never skips: these tests are the node's proof).
func requireNodeTools(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the CSI node tests mount filesystems and attach loop devices: run them as root")
	}
	for tool, pkg := range map[string]string{"nbdfuse": "nbdfuse", "fusermount3": "fuse3", "losetup": "mount", "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs", "blkid": "util-linux", "blockdev": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install it with apt-get install -y %s (scripts/install-test-deps.sh)", tool, pkg)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse is missing: nbdfuse needs FUSE: %v", err)
	}
}

// env is one versitygw with an initialised pool whose credentials are
// in secrets only: the process environment has none, so the driver can
// only have used what the requests carried.
type env struct {
	s3      *s3server.Server
	pool    string
	secrets map[string]string
	params  map[string]string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	s := s3server.Start(t)
	e := &env{s3: s, pool: s.URL,
		secrets: map[string]string{urlcsi.SecretAccessKeyID: s3server.AccessKey, urlcsi.SecretSecretAccessKey: s3server.SecretKey}}
	e.params = map[string]string{urlcsi.ParamPool: e.pool, urlcsi.ParamCacheSize: "64M"}
	e.initPool(t, e.pool)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	return e
}

// initPool initialises a pool with the server's credentials (still in the
// environment when newEnv calls it).
func (e *env) initPool(t testing.TB, pool string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := volume.InitPoolURL(ctx, pool, volume.PoolOptions{})
	if err != nil {
		t.Fatalf("init pool: %v", err)
	}
	p.Close()
}

// withCreds runs fn with the server's credentials in the environment
// (newEnv took them out, so that the driver has only the secrets).
func withCreds(t testing.TB, fn func()) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", s3server.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3server.SecretKey)
	defer func() {
		os.Setenv("AWS_ACCESS_KEY_ID", "")
		os.Setenv("AWS_SECRET_ACCESS_KEY", "")
	}()
	fn()
}

// volumes lists the pool's volumes (with the test's credentials).
func (e *env) volumes(t testing.TB, pool string) []string {
	t.Helper()
	var names []string
	withCreds(t, func() { names = e.listVolumes(t, pool) })
	return names
}

func (e *env) listVolumes(t testing.TB, pool string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := volume.OpenPoolURL(ctx, pool, volume.PoolOptions{})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	defer p.Close()
	ds, err := p.List(ctx)
	if err != nil {
		t.Fatalf("list volumes: %v", err)
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Name)
	}
	return names
}

// node is a running driver with a gRPC client.
type node struct {
	id       string
	stateDir string
	sock     string
	ctl      csi.ControllerClient
	node     csi.NodeClient
	ident    csi.IdentityClient
	stop     func()
}

// startDriver runs a driver (controller and node) as node id, with its
// own state directory, until the test ends.
func startDriver(t testing.TB, id string) *node {
	t.Helper()
	dir := shortTempDir(t)
	return runDriver(t, &node{id: id, stateDir: filepath.Join(dir, "state"), sock: filepath.Join(dir, "csi.sock")})
}

// shortTempDir is a temporary directory with a short path: the driver's
// unix sockets live below it, and t.TempDir's paths are too long for them.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// restartDriver starts a new driver process-equivalent in place of the
// stopped old: same node id, state directory and socket.
func restartDriver(t testing.TB, old *node) *node {
	t.Helper()
	return runDriver(t, &node{id: old.id, stateDir: old.stateDir, sock: old.sock})
}

func runDriver(t testing.TB, n *node) *node {
	t.Helper()
	id := n.id
	d, err := urlcsi.New(urlcsi.Config{Endpoint: "unix://" + n.sock, NodeID: id, Controller: true, Node: true,
		StateDir: n.stateDir, Serve: []string{urldiskBin, "serve"},
		Logger: slog.New(slog.NewTextHandler(testLog{t, id}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := urlcsi.Listen("unix://" + n.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx, l) }()
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n.ctl, n.node, n.ident = csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewIdentityClient(conn)
	stopped := false
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("driver %s: %v", id, err)
		}
	}
	t.Cleanup(n.stop)
	return n
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

var rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

// createVolume creates a volume of size bytes through n's controller.
func (e *env) createVolume(t testing.TB, n *node, name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	r, err := n.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap(rwo)},
		Parameters:          e.params,
		Secrets:             e.secrets,
		VolumeContentSource: src})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return r.Volume
}

// staging is a staged volume on a node.
type staging struct {
	n           *node
	vol         *csi.Volume
	path        string // staging path (mount) or published device (block)
	stagingPath string
	cap         *csi.VolumeCapability
	unstage     func(t testing.TB) error
}

// stage stages vol on n (and for a block volume publishes it, so path is
// a device node). Cleanup unstages it if the test did not.
func (e *env) stage(t testing.TB, n *node, vol *csi.Volume, c *csi.VolumeCapability) *staging {
	t.Helper()
	dir := t.TempDir()
	s := &staging{n: n, vol: vol, cap: c, path: filepath.Join(dir, "staging")}
	s.stagingPath = s.path
	_, err := n.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId,
		StagingTargetPath: s.path, VolumeCapability: c, Secrets: e.secrets, VolumeContext: vol.VolumeContext})
	if err != nil {
		t.Fatalf("NodeStageVolume on %s: %v", n.id, err)
	}
	target := ""
	if c.GetBlock() != nil {
		target = filepath.Join(dir, "dev")
		if _, err := n.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId,
			StagingTargetPath: s.path, TargetPath: target, VolumeCapability: c}); err != nil {
			t.Fatalf("NodePublishVolume on %s: %v", n.id, err)
		}
	}
	done := false
	s.unstage = func(t testing.TB) error {
		if done {
			return nil
		}
		done = true
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if target != "" {
			if _, err := s.n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
				return err
			}
		}
		_, err := s.n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: s.path})
		return err
	}
	if target != "" {
		s.path = target
	}
	t.Cleanup(func() {
		if err := s.unstage(t); err != nil {
			t.Errorf("unstage on %s at cleanup: %v", s.n.id, err)
		}
	})
	return s
}

// writeSync writes a file under dir and fsyncs it and the directory.
func writeSync(dir, name string, data []byte) error {
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// wantCode fails unless err is a gRPC status with code want whose message
// contains every one of words.
func wantCode(t testing.TB, what string, err error, want codes.Code, words ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != want {
		t.Errorf("%s: got %v, want code %v", what, err, want)
		return
	}
	for _, w := range words {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("%s: message %q does not name %q", what, st.Message(), w)
		}
	}
}

// testLog sends a driver's log lines to the test's log (shown with -v or
// on failure), so they do not interleave with benchmark results.
type testLog struct {
	t    testing.TB
	node string
}

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s: %s", l.node, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
