package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/volref"
)

// serveStopGrace is how long unstaging waits for serve's final flush
// before killing it (what is not flushed then is lost, as on a crash).
const serveStopGrace = 2 * time.Minute

// NodeGetInfo names the node; volumes have no topology.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID}, nil
}

// NodeGetCapabilities: stage/unstage and stats.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// readOnlyMode: access modes served through a read-only serve (no fence;
// any number of nodes).
func readOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		return true
	}
	return false
}

// NodeStageVolume serves the volume (read-write fences any other writer
// at once: that is the takeover), presents it as a loop device over
// nbdfuse, and for a filesystem volume formats it on first use and
// mounts it at the staging path. Staging what is staged succeeds.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	case req.GetStagingTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "staging target path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	}
	if msg := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); msg != "" {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	ref, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	prm, err := parseParams(req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if err := samePool("volume", ref, prm.pool); err != nil {
		return nil, err
	}
	dir, old, unlock, err := d.lockedState(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if old != nil {
		if old.Staging != filepath.Clean(req.GetStagingTargetPath()) {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is already staged at %s", ref, old.Staging)
		}
		if d.stagedOK(old) {
			return &csi.NodeStageVolumeResponse{}, nil
		}
		// A completed stage whose serve is gone was most likely fenced by
		// another node's takeover. Staging again would take the volume
		// back from that node behind the CO's back (a kubelet restart
		// re-stages what it finds): refuse until it is unstaged.
		if old.Mounted || (old.Block && old.Loop != "") {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s was staged here but its serve has exited (fenced by another node's stage?): unstage it before staging it again; serve said: %s",
				ref, logTail(filepath.Join(dir, "serve.log")))
		}
		// A half-done stage (the driver was killed midway): undo it and
		// stage again.
		if err := d.teardown(ctx, dir, old); err != nil {
			return nil, status.Errorf(codes.Internal, "undo the earlier stage of %s: %v", ref, err)
		}
	}
	// Look the volume up first, so that a missing one is NotFound and
	// nothing is started.
	p, done, err := d.openPool(ctx, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	_, err = p.Resolve(ctx, ref.Name)
	done()
	if err != nil {
		return nil, statusOf(err, "look up "+ref.String())
	}
	vc := req.GetVolumeCapability()
	s := &staged{VolumeID: req.GetVolumeId(), Staging: filepath.Clean(req.GetStagingTargetPath()), ReadOnly: readOnlyMode(vc), Block: vc.GetBlock() != nil}
	if m := vc.GetMount(); m != nil {
		s.FsType = cmpOr(m.FsType, "ext4")
	}
	start := time.Now()
	if err := d.stage(ctx, dir, ref, prm, req.GetSecrets(), s); err != nil {
		if terr := d.teardown(context.WithoutCancel(ctx), dir, s); terr != nil {
			d.log.Warn("undoing a failed stage", "volume", ref.String(), "err", terr)
		}
		return nil, statusOf(err, "stage "+ref.String())
	}
	d.log.Info("volume staged", "volume", ref.String(), "device", s.Loop, "read_only", s.ReadOnly, "block", s.Block, "took", time.Since(start).Round(time.Millisecond))
	return &csi.NodeStageVolumeResponse{}, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// stagedOK reports whether s is fully staged and still served.
func (d *Driver) stagedOK(s *staged) bool {
	if !s.Serve.alive() || !s.Fuse.alive() || s.Loop == "" {
		return false
	}
	if s.Block {
		return true
	}
	m, err := isMountPoint(s.Staging)
	return err == nil && m && s.Mounted
}

// stage does each step, recording it in s and the state file as it
// succeeds, so teardown (now or after a restart) undoes exactly those.
func (d *Driver) stage(ctx context.Context, dir string, ref volref.Ref, prm params, secrets map[string]string, s *staged) error {
	for _, tool := range []string{"nbdfuse", "fusermount3", "losetup", "mount", "umount", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			return status.Errorf(codes.FailedPrecondition, "node is missing %s: %v", tool, err)
		}
	}
	run := filepath.Join(dir, "r")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make state directory: %w", err)
	}
	// serve puts its control socket under $XDG_RUNTIME_DIR; one private
	// directory per staged volume, so two nodes' drivers on one host (as
	// in the tests) never share a socket path.
	if err := rundir.Ensure(rundir.Private, run); err != nil {
		return err
	}
	if err := saveState(dir, s); err != nil {
		return err
	}
	sock := filepath.Join(dir, "nbd.sock")
	os.Remove(sock)
	argv := append(append([]string(nil), d.cfg.Serve...), ref.URL(), "--listen", "unix:"+sock,
		"--cache", d.cacheDir(dir), "--cache-size", prm.cacheSize)
	if s.ReadOnly {
		argv = append(argv, "--read-only")
	}
	env, err := serveEnv(ref.Pool, secrets, run)
	if err != nil {
		return err
	}
	serveLog := filepath.Join(dir, "serve.log")
	if s.Serve, err = startDetached(argv, env, serveLog); err != nil {
		return err
	}
	if err := saveState(dir, s); err != nil {
		return err
	}
	if err := waitFor(ctx, "urldisk serve", s.Serve, serveLog, func() bool { return socketUp(sock) }); err != nil {
		return err
	}
	// Before nbdfuse connects: it fixes the size it sees for as long as
	// it runs.
	if !s.ReadOnly {
		p, done, err := d.openPool(ctx, ref.Pool, secrets)
		if err != nil {
			return err
		}
		err = d.applyRequested(ctx, p, ref, run, s)
		done()
		if err != nil {
			return err
		}
	}
	fuse := filepath.Join(dir, "fuse")
	if err := os.MkdirAll(fuse, 0o700); err != nil {
		return fmt.Errorf("make nbdfuse mountpoint: %w", err)
	}
	pidfile := filepath.Join(dir, "nbdfuse.pid")
	os.Remove(pidfile)
	fuseArgs := []string{"nbdfuse", "-P", pidfile}
	if s.ReadOnly {
		fuseArgs = append(fuseArgs, "-r")
	}
	fuseArgs = append(fuseArgs, fuse, "nbd+unix:///"+ref.Name+"?socket="+sock)
	fuseLog := filepath.Join(dir, "nbdfuse.log")
	if s.Fuse, err = startDetached(fuseArgs, os.Environ(), fuseLog); err != nil {
		return err
	}
	if err := saveState(dir, s); err != nil {
		return err
	}
	if err := waitFor(ctx, "nbdfuse", s.Fuse, fuseLog, func() bool {
		b, err := os.ReadFile(pidfile)
		return err == nil && len(b) > 0
	}); err != nil {
		return fmt.Errorf("%w (serve: %s)", err, logTail(serveLog))
	}
	loArgs := []string{"-f", "--show"}
	if s.ReadOnly {
		loArgs = append(loArgs, "-r")
	}
	if s.Loop, err = runTool(ctx, "losetup", append(loArgs, filepath.Join(fuse, "nbd"))...); err != nil {
		return err
	}
	if err := saveState(dir, s); err != nil {
		return err
	}
	if s.Block {
		return nil
	}
	if err := formatOnce(ctx, s); err != nil {
		return err
	}
	if err := growExtUnmounted(ctx, s); err != nil {
		return err
	}
	if err := os.MkdirAll(s.Staging, 0o750); err != nil {
		return fmt.Errorf("make staging path: %w", err)
	}
	opts := []string{"-t", s.FsType}
	if s.ReadOnly {
		// noload: no journal replay, which would write.
		opts = append(opts, "-o", "ro,noload")
		if s.FsType == "xfs" {
			opts[len(opts)-1] = "ro,norecovery"
		}
	}
	if _, err := runTool(ctx, "mount", append(opts, s.Loop, s.Staging)...); err != nil {
		return err
	}
	s.Mounted = true
	return saveState(dir, s)
}

// runTool is run with the errors of a tool's failure as Internal.
func runTool(ctx context.Context, name string, args ...string) (string, error) {
	out, err := run(ctx, name, args...)
	if err != nil {
		return "", status.Error(codes.Internal, err.Error())
	}
	return out, nil
}

// formatOnce makes the filesystem if the device holds none; a device
// holding another filesystem than asked for is refused, never formatted.
func formatOnce(ctx context.Context, s *staged) error {
	out, err := run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", s.Loop)
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) { // 2: nothing found
		return status.Error(codes.Internal, err.Error())
	}
	switch {
	case out == s.FsType:
		return nil
	case out != "":
		return status.Errorf(codes.FailedPrecondition, "volume holds a %s filesystem, not the %s asked for", out, s.FsType)
	case s.ReadOnly:
		return status.Error(codes.FailedPrecondition, "volume holds no filesystem and is staged read-only: stage it read-write once to format it")
	}
	mkfs := "mkfs." + s.FsType
	if _, err := exec.LookPath(mkfs); err != nil {
		return status.Errorf(codes.FailedPrecondition, "node cannot make a %s filesystem: %v", s.FsType, err)
	}
	// nodiscard: the volume is empty already; discarding it all would
	// only send TRIMs through nbdfuse.
	args := []string{"-q", "-E", "nodiscard", s.Loop}
	if s.FsType == "xfs" {
		args = []string{"-q", "-K", s.Loop}
	}
	_, err = runTool(ctx, mkfs, args...)
	return err
}

// serveEnv is serve's environment: the driver's, less any S3 credentials
// of its own, plus the request's secrets for an s3:// pool, and a private
// runtime directory.
func serveEnv(pool string, secrets map[string]string, runDir string) ([]string, error) {
	creds, err := credentials(pool, secrets)
	if err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "XDG_RUNTIME_DIR":
			if creds != nil || k == "XDG_RUNTIME_DIR" {
				continue
			}
		}
		env = append(env, kv)
	}
	env = append(env, "XDG_RUNTIME_DIR="+runDir)
	if creds != nil {
		env = append(env, "AWS_ACCESS_KEY_ID="+creds.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+creds.SecretAccessKey)
		if creds.SessionToken != "" {
			env = append(env, "AWS_SESSION_TOKEN="+creds.SessionToken)
		}
	}
	return env, nil
}

// socketUp reports whether a unix socket accepts connections.
func socketUp(path string) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path}) == nil
}

// teardown undoes what s records, in reverse: unmount (the filesystem
// flushes), detach the loop device, unmount nbdfuse, stop serve (its final
// flush), then remove the state. It goes on past a failed step so that as
// much as possible is released, and returns every error.
func (d *Driver) teardown(ctx context.Context, dir string, s *staged) error {
	var errs []error
	if s.Mounted {
		if err := unmount(ctx, s.Staging); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Loop != "" && loopBacked(s.Loop, filepath.Join(dir, "fuse", "nbd")) {
		run(ctx, "blockdev", "--flushbufs", s.Loop) // best effort: a fenced volume fails it
		if _, err := run(ctx, "losetup", "-d", s.Loop); err != nil {
			errs = append(errs, err)
		}
	}
	fuse := filepath.Join(dir, "fuse")
	if m, _ := isMountPoint(fuse); m {
		var err error
		// The loop device lets go of the file asynchronously.
		for i := 0; i < 50; i++ {
			if _, err = run(ctx, "fusermount3", "-u", fuse); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, err)
			run(ctx, "fusermount3", "-u", "-z", fuse)
		}
	}
	s.Fuse.stop(ctx, 10*time.Second)
	if s.Serve.alive() && s.Serve.stop(ctx, serveStopGrace) {
		errs = append(errs, fmt.Errorf("urldisk serve did not stop within %v and was killed: writes not yet flushed are lost", serveStopGrace))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The cache goes with the stage, so a node's disk holds caches of the
	// volumes staged on it, not of every volume it ever staged.
	if err := os.RemoveAll(d.cacheDir(dir)); err != nil {
		return fmt.Errorf("remove read cache: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove stage state: %w", err)
	}
	return nil
}

// field is a string field a CSI request must carry: its name for the
// error, and its value.
type field struct{ name, value string }

// required is InvalidArgument naming the first empty one of fields, or
// nil.
func required(fields ...field) error {
	for _, f := range fields {
		if f.value == "" {
			return status.Error(codes.InvalidArgument, f.name+" is required")
		}
	}
	return nil
}

// lockedState checks that the request carries volumeID and the other
// required fields, then takes the stage lock of volumeID and reads its
// stage state in dir (s is nil when it has none): every node call that
// reads or changes a stage holds that lock while it does. release unlocks.
func (d *Driver) lockedState(ctx context.Context, volumeID string, fields ...field) (dir string, s *staged, release func(), err error) {
	if err := required(append([]field{{"volume id", volumeID}}, fields...)...); err != nil {
		return "", nil, nil, err
	}
	unlock, err := d.locks.lock(ctx, "stage:"+volumeID)
	if err != nil {
		return "", nil, nil, err
	}
	dir = d.volDir(volumeID)
	if s, err = loadState(dir); err != nil {
		unlock()
		return "", nil, nil, status.Error(codes.Internal, err.Error())
	}
	return dir, s, unlock, nil
}

// cacheDir is the read cache of the volume whose state is in dir.
func (d *Driver) cacheDir(dir string) string {
	return filepath.Join(d.cfg.CacheDir, filepath.Base(dir))
}

// loopBacked reports whether loop is still attached to file (after a
// restart the number may have been reused by someone else).
func loopBacked(loop, file string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file"))
	return err == nil && strings.TrimSpace(string(b)) == file
}

// NodeUnstageVolume unmounts, detaches and stops serving; unstaging what
// is not staged succeeds.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	dir, s, unlock, err := d.lockedState(ctx, req.GetVolumeId(), field{"staging target path", req.GetStagingTargetPath()})
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := d.teardown(ctx, dir, s); err != nil {
		return nil, status.Errorf(codes.Internal, "unstage %s: %v", objstore.Redact(req.GetVolumeId()), err)
	}
	d.log.Info("volume unstaged", "volume", objstore.Redact(req.GetVolumeId()))
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged filesystem, or the device
// node for a block volume, at the target path.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	case req.GetTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "target path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	case req.GetStagingTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "staging target path is required (the driver stages volumes)")
	}
	_, s, unlock, err := d.lockedState(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s == nil {
		if _, err := parseVolumeID(req.GetVolumeId()); err != nil {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", objstore.Redact(req.GetVolumeId()))
	}
	if s.Block != (req.GetVolumeCapability().GetBlock() != nil) {
		return nil, status.Error(codes.InvalidArgument, "access type differs from the one the volume was staged with")
	}
	target := filepath.Clean(req.GetTargetPath())
	if m, err := isMountPoint(target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if m {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	src := s.Staging
	if s.Block {
		src = s.Loop
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "make target's directory: %v", err)
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o600)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "make block target: %v", err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "make target path: %v", err)
	}
	args := []string{"--bind", src, target}
	if req.GetReadonly() || s.ReadOnly {
		args = append([]string{"-o", "ro"}, args...)
	}
	if _, err := runTool(ctx, "mount", args...); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target path and removes it.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := required(field{"volume id", req.GetVolumeId()}, field{"target path", req.GetTargetPath()}); err != nil {
		return nil, err
	}
	target := filepath.Clean(req.GetTargetPath())
	if err := unmount(ctx, target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "remove target path: %v", err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports usage of a published or staged path.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := required(field{"volume id", req.GetVolumeId()}, field{"volume path", req.GetVolumePath()}); err != nil {
		return nil, err
	}
	s, err := loadState(d.volDir(req.GetVolumeId()))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if s == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", objstore.Redact(req.GetVolumeId()))
	}
	path := filepath.Clean(req.GetVolumePath())
	if m, err := isMountPoint(path); err != nil || !m {
		return nil, status.Errorf(codes.NotFound, "volume %s is not at %s", objstore.Redact(req.GetVolumeId()), path)
	}
	if s.Block {
		out, err := runTool(ctx, "blockdev", "--getsize64", s.Loop)
		if err != nil {
			return nil, err
		}
		n, _ := strconv.ParseInt(out, 10, 64)
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: n}}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}
