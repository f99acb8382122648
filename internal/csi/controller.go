package csi

import (
	"cmp"
	"context"
	"errors"
	"math"
	"slices"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

const (
	// defaultVolumeSize is what CreateVolume gives when the CO asks for no
	// particular capacity.
	defaultVolumeSize = 1 << 30
	blockSize         = 4096
)

// ControllerGetCapabilities: no ControllerPublish (the node does all the
// attaching; the store's fence decides who writes), no expansion (a
// volume's size is fixed in its descriptor).
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCapabilities refuses capabilities the driver cannot give, naming
// what is wrong; empty means every one is supported.
func checkCapabilities(caps []*csi.VolumeCapability) string {
	if len(caps) == 0 {
		return "no volume capabilities given"
	}
	for _, c := range caps {
		if c.GetBlock() == nil && c.GetMount() == nil {
			return "volume capability without access type (block or mount)"
		}
		if m := c.GetMount(); m != nil && m.FsType != "" && m.FsType != "ext4" && m.FsType != "xfs" {
			return "filesystem " + strconv.Quote(m.FsType) + " is not supported (ext4 or xfs)"
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		default:
			return "access mode " + c.GetAccessMode().GetMode().String() + " is not supported (one writer at a time, or readers only)"
		}
	}
	return ""
}

// capacity picks the size of a new volume from the range asked for.
func capacity(r *csi.CapacityRange) (uint64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Errorf(codes.OutOfRange, "capacity range %d..%d: negative", req, lim)
	}
	size := uint64(req)
	if size == 0 {
		size = defaultVolumeSize
		if lim > 0 && uint64(lim) < size {
			size = uint64(lim)
		}
	}
	size = (size + blockSize - 1) / blockSize * blockSize
	if lim > 0 && size > uint64(lim) {
		return 0, status.Errorf(codes.OutOfRange, "capacity range %d..%d bytes: no size that is a multiple of %d fits", req, lim, blockSize)
	}
	if size > math.MaxInt64/2 {
		return 0, status.Errorf(codes.OutOfRange, "capacity %d bytes is too large", size)
	}
	return size, nil
}

// fits reports whether an existing volume of size satisfies r.
func fits(size uint64, r *csi.CapacityRange) bool {
	return size >= uint64(r.GetRequiredBytes()) && (r.GetLimitBytes() == 0 || size <= uint64(r.GetLimitBytes()))
}

// CreateVolume creates a volume, or clones one from a snapshot or a
// volume in O(1); idempotent by name.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume name is required")
	}
	if msg := checkCapabilities(req.GetVolumeCapabilities()); msg != "" {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	prm, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	size, err := capacity(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	name := volumeName(req.GetName(), volref.ValidateName)
	p, done, err := d.lockedPool(ctx, "vol:"+name, prm.pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	respond := func(desc *format.VolumeDesc) *csi.CreateVolumeResponse {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{
			VolumeId:      volumeID(prm.pool, desc.Name),
			CapacityBytes: int64(desc.Size),
			VolumeContext: map[string]string{ParamPool: prm.pool, ParamCacheSize: prm.cacheSize},
			ContentSource: req.GetVolumeContentSource(),
		}}
	}
	if desc, err := p.Resolve(ctx, name); err == nil {
		if !fits(desc.Size, req.GetCapacityRange()) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with %d bytes, outside the capacity range asked for", req.GetName(), desc.Size)
		}
		return respond(desc), nil
	} else if !errors.Is(err, volume.ErrNotFound) {
		return nil, statusOf(err, "look up volume "+name)
	}
	var desc *format.VolumeDesc
	if src := req.GetVolumeContentSource(); src != nil {
		desc, err = d.cloneFrom(ctx, p, prm.pool, src, name, req.GetCapacityRange())
	} else {
		desc, err = p.Create(ctx, name, volume.CreateOptions{Size: size, BlockSize: blockSize})
		if err != nil {
			err = statusOf(err, "create volume "+name)
		}
	}
	if err != nil {
		return nil, err
	}
	d.log.Info("volume created", "volume", volumeRefString(prm.pool, name), "bytes", desc.Size, "clone", desc.Parent != nil)
	return respond(desc), nil
}

// cloneFrom makes volume name a clone of a snapshot or a volume's head.
// A clone has its source's size, so a larger capacity is out of range.
func (d *Driver) cloneFrom(ctx context.Context, p *volume.Pool, pool string, src *csi.VolumeContentSource, name string, r *csi.CapacityRange) (*format.VolumeDesc, error) {
	var ref volref.Ref
	var err error
	switch {
	case src.GetSnapshot() != nil:
		ref, err = parseSnapshotID(src.GetSnapshot().GetSnapshotId())
	case src.GetVolume() != nil:
		ref, err = parseVolumeID(src.GetVolume().GetVolumeId())
	default:
		return nil, status.Error(codes.InvalidArgument, "volume content source is neither a snapshot nor a volume")
	}
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "content source: %v", err)
	}
	if err := samePool("content source", ref, pool); err != nil {
		return nil, err
	}
	sd, err := p.Resolve(ctx, ref.Name)
	if err != nil {
		return nil, statusOf(err, "content source "+ref.String())
	}
	if !fits(sd.Size, r) {
		return nil, status.Errorf(codes.OutOfRange, "content source %s has %d bytes, outside the capacity range asked for (a clone has its source's size)", ref, sd.Size)
	}
	desc, err := p.Clone(ctx, ref.Name, ref.Point, name)
	if err != nil {
		return nil, statusOf(err, "clone "+ref.String())
	}
	return desc, nil
}

func volumeRefString(pool, name string) string { return volref.Ref{Pool: pool, Name: name}.String() }

// DeleteVolume removes a volume; an id that names no volume succeeds.
// Checkpoints of a removed volume go with it (after GC's grace period).
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	ref, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	p, done, err := d.lockedPool(ctx, "vol:"+ref.Name, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	desc, err := p.Resolve(ctx, ref.Name)
	if errors.Is(err, volume.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, statusOf(err, "delete volume "+ref.String())
	}
	if err := p.Remove(ctx, ref.Name); err != nil && !errors.Is(err, volume.ErrNotFound) {
		return nil, statusOf(err, "delete volume "+ref.String())
	}
	// Its expansion request goes with it (keyed by id: nothing else reads it).
	if err := p.Store().Delete(ctx, expandKey(desc.ID)); err != nil {
		return nil, statusOf(err, "delete the expansion request of volume "+ref.String())
	}
	d.log.Info("volume deleted", "volume", ref.String())
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms the capabilities the driver gives.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	ref, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	if pool := req.GetVolumeContext()[ParamPool]; pool != "" {
		if err := samePoolURL(ref, pool); err != nil {
			return nil, err
		}
	}
	p, done, err := d.openPool(ctx, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	if _, err := p.Resolve(ctx, ref.Name); err != nil {
		return nil, statusOf(err, "look up "+ref.String())
	}
	if msg := checkCapabilities(req.GetVolumeCapabilities()); msg != "" {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: msg}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// samePoolURL is samePool for a pool URL given by the CO, canonicalised.
func samePoolURL(ref volref.Ref, pool string) error {
	prm, err := parseParams(map[string]string{ParamPool: pool})
	if err != nil {
		return err
	}
	return samePool("volume", ref, prm.pool)
}

// GetCapacity: an object store has no capacity to report; the largest
// value says "not a constraint" to capacity-aware scheduling.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetParameters()) > 0 {
		if _, err := parseParams(req.GetParameters()); err != nil {
			return nil, err
		}
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		if msg := checkCapabilities(req.GetVolumeCapabilities()); msg != "" {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	return &csi.GetCapacityResponse{AvailableCapacity: math.MaxInt64}, nil
}

// CreateSnapshot labels the source volume's durable head as a checkpoint
// (a few requests, never a copy; it never fences the node writing it).
// Snapshot names are unique across volumes: a name taken by another
// volume's checkpoint is AlreadyExists.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot name is required")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	if len(req.GetParameters()) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "unknown snapshot parameters: the driver takes none")
	}
	ref, err := parseVolumeID(req.GetSourceVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "source volume: %v", err)
	}
	label := volumeName(req.GetName(), volref.ValidateLabel)
	p, done, err := d.lockedPool(ctx, "snap:"+label, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	sd, err := p.Resolve(ctx, ref.Name)
	if err != nil {
		return nil, statusOf(err, "source volume "+ref.String())
	}
	snaps, err := listSnapshots(ctx, p, ref.Pool, "")
	if err != nil {
		return nil, err
	}
	for _, s := range snaps {
		r, _ := parseSnapshotID(s.SnapshotId)
		if r.Point.Label != label {
			continue
		}
		if r.Name != ref.Name {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists, of another volume (%s)", req.GetName(), r)
		}
		return &csi.CreateSnapshotResponse{Snapshot: s}, nil
	}
	c, err := p.Checkpoint(ctx, ref.Name, label)
	if err != nil {
		return nil, statusOf(err, "checkpoint "+ref.String())
	}
	d.log.Info("snapshot created", "volume", ref.String(), "label", label, "seq", c.Seq)
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(ref.Pool, ref.Name, sd.Size, c.Label, c.Seq, c.Time.Unix(), int32(c.Time.Nanosecond()))}, nil
}

func snapshotOf(pool, name string, size uint64, label string, seq uint64, sec int64, nsec int32) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     snapshotID(pool, name, label),
		SourceVolumeId: volumeID(pool, name),
		SizeBytes:      int64(size),
		CreationTime:   &timestamppb.Timestamp{Seconds: sec, Nanos: nsec},
		ReadyToUse:     true,
	}
}

// DeleteSnapshot removes a checkpoint; an id naming none succeeds.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	ref, err := parseSnapshotID(req.GetSnapshotId())
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	p, done, err := d.lockedPool(ctx, "snap:"+ref.Point.Label, ref.Pool, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer done()
	if err := p.RemoveCheckpoint(ctx, ref.Name, ref.Point.Label); err != nil && !errors.Is(err, volume.ErrNotFound) {
		return nil, statusOf(err, "delete snapshot "+ref.String())
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// listSnapshots lists the checkpoints of volume name in pool, or of every
// volume when name is empty.
func listSnapshots(ctx context.Context, p *volume.Pool, pool, name string) ([]*csi.Snapshot, error) {
	var descs []*format.VolumeDesc
	if name != "" {
		d, err := p.Resolve(ctx, name)
		if errors.Is(err, volume.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, statusOf(err, "look up "+name)
		}
		descs = append(descs, d)
	} else {
		var err error
		if descs, err = p.List(ctx); err != nil {
			return nil, statusOf(err, "list volumes")
		}
	}
	var out []*csi.Snapshot
	for _, d := range descs {
		cps, err := p.Checkpoints(ctx, d.Name)
		if errors.Is(err, volume.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, statusOf(err, "list checkpoints of "+d.Name)
		}
		for _, c := range cps {
			out = append(out, snapshotOf(pool, d.Name, d.Size, c.Label, c.Seq, c.Time.Unix(), int32(c.Time.Nanosecond())))
		}
	}
	return out, nil
}

// ListSnapshots lists by snapshot id, by source volume, or (without a
// filter) every snapshot of the pools this process has been asked about,
// in id order; the token is the index of the next entry.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	start := 0
	if t := req.GetStartingToken(); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return nil, status.Errorf(codes.Aborted, "starting token %q is not one ListSnapshots returned", t)
		}
		start = n
	}
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max entries is negative")
	}
	all, err := d.snapshotsFor(ctx, req)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b *csi.Snapshot) int { return cmp.Compare(a.SnapshotId, b.SnapshotId) })
	if start > len(all) {
		return nil, status.Errorf(codes.Aborted, "starting token %d is past the %d snapshots", start, len(all))
	}
	all = all[start:]
	resp := &csi.ListSnapshotsResponse{}
	if m := int(req.GetMaxEntries()); m > 0 && m < len(all) {
		all = all[:m]
		resp.NextToken = strconv.Itoa(start + m)
	}
	for _, s := range all {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: s})
	}
	return resp, nil
}

// snapshotsFor gathers the snapshots ListSnapshots's filter asks for.
func (d *Driver) snapshotsFor(ctx context.Context, req *csi.ListSnapshotsRequest) ([]*csi.Snapshot, error) {
	var pool, name, wantID string
	switch {
	case req.GetSnapshotId() != "":
		ref, err := parseSnapshotID(req.GetSnapshotId())
		if err != nil {
			return nil, nil
		}
		pool, name, wantID = ref.Pool, ref.Name, req.GetSnapshotId()
	case req.GetSourceVolumeId() != "":
		ref, err := parseVolumeID(req.GetSourceVolumeId())
		if err != nil {
			return nil, nil
		}
		pool, name = ref.Pool, ref.Name
	}
	if pool != "" {
		p, done, err := d.openPool(ctx, pool, req.GetSecrets())
		if err != nil {
			return nil, err
		}
		defer done()
		snaps, err := listSnapshots(ctx, p, pool, name)
		if err != nil || wantID == "" {
			return snaps, err
		}
		return slices.DeleteFunc(snaps, func(s *csi.Snapshot) bool { return s.SnapshotId != wantID }), nil
	}
	var all []*csi.Snapshot
	for pool, secrets := range d.knownPools() {
		if len(req.GetSecrets()) > 0 {
			secrets = req.GetSecrets()
		}
		p, done, err := d.openPool(ctx, pool, secrets)
		if err != nil {
			return nil, err
		}
		snaps, err := listSnapshots(ctx, p, pool, "")
		done()
		if err != nil {
			return nil, err
		}
		all = append(all, snaps...)
	}
	return all, nil
}

// GetSnapshot returns one snapshot by id; NotFound if it does not exist.
func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	snaps, err := d.snapshotsFor(ctx, &csi.ListSnapshotsRequest{SnapshotId: req.GetSnapshotId(), Secrets: req.GetSecrets()})
	if err != nil {
		return nil, err
	}
	if len(snaps) == 0 {
		return nil, status.Errorf(codes.NotFound, "snapshot %s not found", objstore.Redact(req.GetSnapshotId()))
	}
	return &csi.GetSnapshotResponse{Snapshot: snaps[0]}, nil
}
