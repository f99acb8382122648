package csi

import (
	"context"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// Expansion is offline (the plugin's VolumeExpansion capability says so):
// a staged volume's device is a loop on nbdfuse's file, whose size nbdfuse
// fixes when it connects and never re-reads, and a loop cannot change its
// backing file under a mounted filesystem. So the CO grows the volume while
// it is not staged (ControllerExpandVolume, a resize record), and the next
// NodeStageVolume's new connection sees the new size; NodeExpandVolume then
// grows the filesystem. ControllerExpandVolume attaches read-write, which
// fences a writer still serving the volume somewhere.

// ControllerExpandVolume grows a volume to the capacity range asked for;
// a volume already as large succeeds without touching it.
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
	unlock, err := d.locks.lock(ctx, "vol:"+ref.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, done, err := d.openPool(ctx, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	in, err := p.Info(ctx, ref.Name)
	if err != nil {
		return nil, statusOf(err, "expand volume "+ref.String())
	}
	// A filesystem needs the node to grow it; a raw block device does not.
	nodeToo := req.GetVolumeCapability().GetBlock() == nil
	if in.Size >= size {
		if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && in.Size > uint64(lim) {
			return nil, status.Errorf(codes.OutOfRange, "volume %s has %d bytes, over the limit of %d (volumes never shrink)", ref, in.Size, lim)
		}
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(in.Size), NodeExpansionRequired: nodeToo}, nil
	}
	v, err := p.Open(ctx, ref.Name, volume.Options{Logger: d.log})
	if err != nil {
		return nil, statusOf(err, "expand volume "+ref.String())
	}
	err = v.Resize(ctx, size)
	if cerr := v.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, statusOf(err, "expand volume "+ref.String())
	}
	d.log.Info("volume expanded", "volume", ref.String(), "from", in.Size, "to", size)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(size), NodeExpansionRequired: nodeToo}, nil
}

// NodeExpandVolume grows the staged filesystem to its device's size (the
// size the volume had when it was staged) and reports that size.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	unlock, err := d.locks.lock(ctx, "stage:"+req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := loadState(d.volDir(req.GetVolumeId()))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if s == nil || s.Loop == "" {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", objstore.Redact(req.GetVolumeId()))
	}
	if s.ReadOnly {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged read-only: its filesystem cannot grow", objstore.Redact(req.GetVolumeId()))
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
