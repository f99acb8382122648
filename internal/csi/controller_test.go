package csi_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	urlcsi "github.com/urldisk/urldisk/internal/csi"
)

// TestSnapshotAndClone: a snapshot taken while the volume is staged holds
// what was fsynced before it; a volume created from the snapshot holds
// that, one cloned from the volume holds the later data; both are O(1)
// clones, mounted and read through the node.
func TestSnapshotAndClone(t *testing.T) {
	requireNodeTools(t)
	e := newEnv(t)
	n := startDriver(t, "node-a")
	ctx := context.Background()
	vol := e.createVolume(t, n, "pvc-src", 32<<20, nil)
	s := e.stage(t, n, vol, mountCap(rwo))
	if err := writeSync(s.path, "data", []byte("before snapshot")); err != nil {
		t.Fatal(err)
	}
	snap, err := n.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.VolumeId, Secrets: e.secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	if !snap.Snapshot.ReadyToUse || snap.Snapshot.SourceVolumeId != vol.VolumeId || snap.Snapshot.SizeBytes != vol.CapacityBytes {
		t.Errorf("snapshot %+v: want ready, of %s, %d bytes", snap.Snapshot, vol.VolumeId, vol.CapacityBytes)
	}
	if err := writeSync(s.path, "data", []byte("after snapshot!")); err != nil {
		t.Fatal(err)
	}

	fromSnap := e.createVolume(t, n, "pvc-from-snap", 32<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}})
	fromVol := e.createVolume(t, n, "pvc-from-vol", 32<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol.VolumeId}}})
	for _, c := range []struct {
		vol  *csi.Volume
		want string
	}{{fromSnap, "before snapshot"}, {fromVol, "after snapshot!"}} {
		cs := e.stage(t, n, c.vol, mountCap(rwo))
		got, err := os.ReadFile(filepath.Join(cs.path, "data"))
		if err != nil || string(got) != c.want {
			t.Errorf("%s reads %q, %v; want %q", c.vol.VolumeId, got, err, c.want)
		}
		if err := cs.unstage(t); err != nil {
			t.Errorf("unstage %s: %v", c.vol.VolumeId, err)
		}
	}

	list, err := n.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: vol.VolumeId, Secrets: e.secrets})
	if err != nil || len(list.Entries) != 1 || list.Entries[0].Snapshot.SnapshotId != snap.Snapshot.SnapshotId {
		t.Errorf("ListSnapshots of the source: %v, %v; want the one snapshot", list, err)
	}
	if _, err := n.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId, Secrets: e.secrets}); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	list, err = n.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snap.Snapshot.SnapshotId, Secrets: e.secrets})
	if err != nil || len(list.Entries) != 0 {
		t.Errorf("ListSnapshots after delete: %v, %v; want none", list, err)
	}
	// A clone bigger than its source does not fit: the driver cannot grow it.
	_, err = n.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-too-big", CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)}, Parameters: e.params, Secrets: e.secrets,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol.VolumeId}}}})
	wantCode(t, "clone larger than its source", err, codes.OutOfRange, "32")
}

// TestBadInput: each bad request gets the code the CSI spec names and a
// message saying what is wrong, and creates nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	n := startDriver(t, "node-a")
	ctx := context.Background()
	other := e.s3.NewBucket(t)
	withCreds(t, func() { e.initPool(t, other) })
	otherParams := map[string]string{urlcsi.ParamPool: other}
	otherVol, err := n.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-other", VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, Parameters: otherParams, Secrets: e.secrets})
	if err != nil {
		t.Fatalf("CreateVolume in the other pool: %v", err)
	}

	create := func(name string, params, secrets map[string]string, r *csi.CapacityRange, src *csi.VolumeContentSource) error {
		_, err := n.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)},
			CapacityRange: r, Parameters: params, Secrets: secrets, VolumeContentSource: src})
		return err
	}
	small := &csi.CapacityRange{RequiredBytes: 1 << 20}
	withParam := func(k, v string) map[string]string {
		m := map[string]string{urlcsi.ParamPool: e.pool}
		m[k] = v
		return m
	}
	wantCode(t, "unknown parameter", create("pvc-1", withParam("poolURL", "x"), e.secrets, small, nil), codes.InvalidArgument, "poolURL")
	wantCode(t, "no pool parameter", create("pvc-1", map[string]string{urlcsi.ParamCacheSize: "1G"}, e.secrets, small, nil), codes.InvalidArgument, urlcsi.ParamPool)
	wantCode(t, "bad cache size", create("pvc-1", withParam(urlcsi.ParamCacheSize, "lots"), e.secrets, small, nil), codes.InvalidArgument, urlcsi.ParamCacheSize)
	wantCode(t, "missing secrets", create("pvc-1", e.params, nil, small, nil), codes.InvalidArgument, urlcsi.SecretAccessKeyID, urlcsi.SecretSecretAccessKey)
	wantCode(t, "missing secret key", create("pvc-1", e.params, map[string]string{urlcsi.SecretAccessKeyID: "k"}, small, nil), codes.InvalidArgument, urlcsi.SecretSecretAccessKey)
	const wrongSecret = "wrong-secret-Zq81xV"
	err = create("pvc-1", e.params, map[string]string{urlcsi.SecretAccessKeyID: "k", urlcsi.SecretSecretAccessKey: wrongSecret}, small, nil)
	if err == nil || strings.Contains(err.Error(), wrongSecret) {
		t.Errorf("wrong secret: got %v; want an error that does not show the secret", err)
	}
	wantCode(t, "limit below required", create("pvc-1", e.params, e.secrets, &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 5 << 20}, nil), codes.OutOfRange, "capacity")
	wantCode(t, "no block multiple fits", create("pvc-1", e.params, e.secrets, &csi.CapacityRange{RequiredBytes: 1000, LimitBytes: 1000}, nil), codes.OutOfRange, "4096")
	wantCode(t, "clone of another pool's volume", create("pvc-1", e.params, e.secrets, small,
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: otherVol.Volume.VolumeId}}}),
		codes.NotFound, "pvc-other", "not in this StorageClass's pool")
	wantCode(t, "clone of a snapshot that is no id", create("pvc-1", e.params, e.secrets, small,
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "not-a-snapshot"}}}),
		codes.NotFound, "snapshot id")

	_, err = n.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: otherVol.Volume.VolumeId, StagingTargetPath: t.TempDir(),
		VolumeCapability: mountCap(rwo), Secrets: e.secrets, VolumeContext: e.params})
	wantCode(t, "stage another pool's volume id", err, codes.NotFound, "not in this StorageClass's pool")
	_, err = n.ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: otherVol.Volume.VolumeId,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)}, VolumeContext: e.params, Secrets: e.secrets})
	wantCode(t, "validate another pool's volume id", err, codes.NotFound, "not in this StorageClass's pool")
	_, err = n.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: otherVol.Volume.VolumeId, StagingTargetPath: t.TempDir(),
		VolumeCapability: mountCap(rwo), VolumeContext: otherParams})
	wantCode(t, "stage without secrets", err, codes.InvalidArgument, urlcsi.SecretAccessKeyID)
	_, err = n.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", CapacityRange: small, Parameters: e.params, Secrets: e.secrets,
		VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}})
	wantCode(t, "two writers", err, codes.InvalidArgument, "MULTI_NODE_MULTI_WRITER")

	if got := e.volumes(t, e.pool); len(got) != 0 {
		t.Errorf("bad requests created volumes %v", got)
	}
	if got := e.volumes(t, other); !slices.Equal(got, []string{"pvc-other"}) {
		t.Errorf("other pool has %v, want only pvc-other", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(n.stateDir, "vols")); len(entries) != 0 {
		t.Errorf("refused stages left state: %v", entries)
	}
}
