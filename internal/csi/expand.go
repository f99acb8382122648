package csi

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

// Expansion is offline (the plugin's VolumeExpansion capability says so):
// a staged volume's device is a loop on nbdfuse's file, whose size nbdfuse
// fixes when it connects and never re-reads, and a loop cannot change its
// backing file under a mounted filesystem. ControllerExpandVolume must not
// attach read-write: that would fence the node serving the volume, whose
// disk would fail under its pod (Kubernetes does not stop an offline
// expansion of a volume in use). So the controller only records the size
// asked for (expandKey), and the node serving the volume applies it as its
// writer, through its serve's control socket (no second writer, no new
// epoch): when it stages the volume, before nbdfuse connects and sees the
// size, and at NodeExpandVolume.

// kindExpand is the document kind of an expansion request.
const kindExpand = "csi-expand"

// expandRequest is <pool>/csi/expand/<volume id>: the largest size the CO
// asked a volume to grow to.
type expandRequest struct {
	Size uint64 `json:"size"`
}

// expandKey is the object holding volume id's expansion request; keyed by
// id, so a new volume reusing a name never inherits one.
func expandKey(id string) string { return "csi/expand/" + id }

// requestedSize is the size recorded for volume id (0 if none).
func requestedSize(ctx context.Context, st objstore.Store, id string) (uint64, error) {
	b, err := st.Get(ctx, expandKey(id))
	if errors.Is(err, objstore.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read expansion request of volume %s: %w", id, err)
	}
	var r expandRequest
	if err := format.DecodeDoc(kindExpand, b, &r); err != nil {
		return 0, fmt.Errorf("expansion request of volume %s: %w", id, err)
	}
	return r.Size, nil
}

// ControllerExpandVolume records the capacity asked for; the node applies
// it (see above). A request for no more than the volume has, or than was
// asked before, succeeds without touching anything: requests never shrink.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	size, err := capacity(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	ref, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", objstore.Redact(req.GetVolumeId()), err)
	}
	p, done, err := d.lockedPool(ctx, "vol:"+ref.Name, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	in, err := p.Info(ctx, ref.Name)
	if err != nil {
		return nil, statusOf(err, "expand volume "+ref.String())
	}
	asked, err := requestedSize(ctx, p.Store(), in.ID)
	if err != nil {
		return nil, statusOf(err, "expand volume "+ref.String())
	}
	// Even a raw block device needs its node: only the serving node may
	// apply the resize, and its device sees it at the next stage.
	if have := max(in.Size, asked); have >= size {
		if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && have > uint64(lim) {
			return nil, status.Errorf(codes.OutOfRange, "volume %s has (or was asked to grow to) %d bytes, over the limit of %d (volumes never shrink)", ref, have, lim)
		}
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(have), NodeExpansionRequired: true}, nil
	}
	if size%uint64(in.BlockSize) != 0 {
		return nil, status.Errorf(codes.OutOfRange, "volume %s: %d bytes is not a multiple of its block size %d", ref, size, in.BlockSize)
	}
	b, err := format.EncodeDoc(kindExpand, &expandRequest{Size: size})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := p.Store().Put(ctx, expandKey(in.ID), b); err != nil {
		return nil, statusOf(fmt.Errorf("record expansion request: %w", err), "expand volume "+ref.String())
	}
	d.log.Info("volume expansion requested", "volume", ref.String(), "from", in.Size, "to", size)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(size), NodeExpansionRequired: true}, nil
}

// applyRequested grows volume ref of pool p, served read-write by s's
// serve child (runtime directory run), to the size its controller
// recorded, through that serve's control socket.
func (d *Driver) applyRequested(ctx context.Context, p *volume.Pool, ref volref.Ref, run string, s *staged) error {
	in, err := p.Info(ctx, ref.Name)
	if err != nil {
		return statusOf(err, "read size of volume "+ref.String())
	}
	want, err := requestedSize(ctx, p.Store(), in.ID)
	if err != nil {
		return statusOf(err, "expand volume "+ref.String())
	}
	if want <= in.Size {
		return nil
	}
	base := filepath.Join(run, "urldisk")
	sock := control.SocketIn(base, in.ID)
	serveLog := filepath.Join(filepath.Dir(run), "serve.log")
	// serve listens for NBD before it attaches; its control socket follows.
	if err := waitFor(ctx, "urldisk serve's control socket", s.Serve, serveLog, func() bool { return socketUp(sock) }); err != nil {
		return err
	}
	_, served, err := control.CallIn(ctx, base, in.ID, "resize", control.Request{Size: want})
	if err == nil && !served {
		err = fmt.Errorf("no control socket at %s", sock)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "resize volume %s from %d to %d bytes through its serve: %v", ref, in.Size, want, err)
	}
	d.log.Info("volume expanded by its serving node", "volume", ref.String(), "from", in.Size, "to", want)
	return nil
}

// NodeExpandVolume applies a recorded expansion request, grows the staged
// filesystem to its device's size (the size the volume had when it was
// staged) and reports that size.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	_, s, unlock, err := d.lockedState(ctx, req.GetVolumeId(), field{"volume path", req.GetVolumePath()})
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s == nil || s.Loop == "" {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", objstore.Redact(req.GetVolumeId()))
	}
	if s.ReadOnly {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged read-only: its filesystem cannot grow", objstore.Redact(req.GetVolumeId()))
	}
	ref, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	// This node serves the volume: it is the one to apply a recorded
	// request (its device sees it only when staged again). Without pool
	// secrets (the StorageClass names no node-expand secret) the next
	// stage applies it.
	switch p, done, err := d.openPool(ctx, ref.Pool, req.GetSecrets()); {
	case err == nil:
		err = d.applyRequested(ctx, p, ref, filepath.Join(d.volDir(req.GetVolumeId()), "r"), s)
		done()
		if err != nil {
			return nil, err
		}
	case len(req.GetSecrets()) == 0 && status.Code(err) == codes.InvalidArgument:
		d.log.Info("expansion request left to the next stage: no pool secrets in NodeExpandVolume", "volume", ref.String(), "err", err)
	default:
		return nil, err
	}
	// The loop re-reads its backing file's size (nbdfuse's, from its
	// connection) in case it was set up before a resize it can see.
	if _, err := runTool(ctx, "losetup", "-c", s.Loop); err != nil {
		return nil, err
	}
	out, err := runTool(ctx, "blockdev", "--getsize64", s.Loop)
	if err != nil {
		return nil, err
	}
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "size of %s: %q: %v", s.Loop, out, err)
	}
	if !s.Block {
		if err := growFS(ctx, s); err != nil {
			return nil, err
		}
	}
	d.log.Info("volume expanded on node", "volume", objstore.Redact(req.GetVolumeId()), "bytes", n, "fs_type", s.FsType)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: n}, nil
}

// growFS grows the mounted filesystem of s to its device's size.
func growFS(ctx context.Context, s *staged) error {
	if !s.Mounted {
		return status.Error(codes.FailedPrecondition, "the volume's filesystem is not mounted at its staging path")
	}
	switch s.FsType {
	case "ext4", "ext3", "ext2":
		// Usually grown when staged already (growExtUnmounted).
		if small, err := extSmaller(ctx, s.Loop); err != nil || !small {
			return err
		}
		_, err := runTool(ctx, "resize2fs", s.Loop)
		return err
	case "xfs":
		_, err := runTool(ctx, "xfs_growfs", s.Staging)
		return err
	}
	return status.Errorf(codes.FailedPrecondition, "cannot grow a %s filesystem", s.FsType)
}

// growExtUnmounted grows an ext filesystem on s.Loop to the device's size
// before it is mounted, if it is smaller (the volume was expanded while
// not staged). Growing a mounted ext4 needs CAP_SYS_RESOURCE, which a node
// plugin's container may lack; an unmounted one needs only the device.
func growExtUnmounted(ctx context.Context, s *staged) error {
	if s.ReadOnly || (s.FsType != "ext4" && s.FsType != "ext3" && s.FsType != "ext2") {
		return nil
	}
	small, err := extSmaller(ctx, s.Loop)
	if err != nil || !small {
		return err
	}
	// resize2fs refuses a filesystem not checked since it was last mounted.
	if _, err := runTool(ctx, "e2fsck", "-f", "-p", s.Loop); err != nil {
		return err
	}
	_, err = runTool(ctx, "resize2fs", s.Loop)
	return err
}

// extSmaller reports whether the ext filesystem on dev ends before the
// device does by more than 4 MiB (resize2fs may leave off a last block
// group too small to hold its own metadata; it is not worth an e2fsck -f
// at every stage).
func extSmaller(ctx context.Context, dev string) (bool, error) {
	out, err := runTool(ctx, "dumpe2fs", "-h", dev)
	if err != nil {
		return false, err
	}
	var blocks, bs int64
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(line, ":")
		switch v = strings.TrimSpace(v); {
		case !ok:
		case k == "Block count":
			blocks, _ = strconv.ParseInt(v, 10, 64)
		case k == "Block size":
			bs, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if blocks == 0 || bs == 0 {
		return false, status.Errorf(codes.Internal, "dumpe2fs -h %s: no block count or size in %q", dev, out)
	}
	devOut, err := runTool(ctx, "blockdev", "--getsize64", dev)
	if err != nil {
		return false, err
	}
	n, err := strconv.ParseInt(devOut, 10, 64)
	if err != nil {
		return false, status.Errorf(codes.Internal, "size of %s: %q: %v", dev, devOut, err)
	}
	return blocks*bs+4<<20 < n, nil
}
