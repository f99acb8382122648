package csi_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	urlcsi "github.com/urldisk/urldisk/internal/csi"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// TestCSICommand runs the real `urldisk csi` binary: it serves Identity,
// Controller and Node on its endpoint, names itself and its node, and
// exits 0 on SIGTERM.
func TestCSICommand(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "csi.sock")
	cmd := exec.Command(urldiskBin, "csi", "--controller", "--node", "--node-id", "node-7",
		"--endpoint", "unix://"+sock, "--state-dir", filepath.Join(dir, "state"))
	var out lockedbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("urldisk csi output:\n%s", out.String())
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true))
	if err != nil || info.Name != urlcsi.DriverName {
		t.Fatalf("GetPluginInfo: %v, %v; want %s", info, err, urlcsi.DriverName)
	}
	ni, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.NodeId != "node-7" {
		t.Errorf("NodeGetInfo: %v, %v; want node-7", ni, err)
	}
	if _, err := csi.NewControllerClient(conn).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{}); err != nil {
		t.Errorf("ControllerGetCapabilities: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("urldisk csi after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("urldisk csi did not exit after SIGTERM")
	}
}
