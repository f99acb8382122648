package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/csi"
)

type csiOptions struct {
	endpoint   string
	nodeID     string
	controller bool
	node       bool
	stateDir   string
	cacheDir   string
}

func (o *csiOptions) validate() error {
	if !o.controller && !o.node {
		return errors.New("give --controller, --node or both")
	}
	if o.node && o.nodeID == "" {
		return errors.New("--node needs --node-id")
	}
	return nil
}

func newCSICommand(g *globals) *cobra.Command {
	o := &csiOptions{}
	cmd := command("csi --endpoint unix:///csi/csi.sock --node-id NODE [--controller] [--node]", "Run the Kubernetes CSI driver (Identity, Controller and/or Node services)",
		exactArgs(0, "no arguments"), func(ctx context.Context, out io.Writer, _ []string) error {
			return runCSI(ctx, g, o)
		})
	cmd.Long = `Serve the Container Storage Interface on a unix socket until SIGTERM or
SIGINT. The controller creates, deletes, snapshots (checkpoints) and clones
volumes in the pool named by the StorageClass parameter "pool"; the node
serves each staged volume with a child "urldisk serve", presents it as a
loop device over nbdfuse, formats it on first use and mounts it.
Credentials come only from the CSI secrets (accessKeyID, secretAccessKey,
sessionToken). See docs/kubernetes.md.`
	f := cmd.Flags()
	f.StringVar(&o.endpoint, "endpoint", "unix:///csi/csi.sock", "gRPC endpoint: unix:///path/to/csi.sock")
	f.StringVar(&o.nodeID, "node-id", "", "this node's id (required with --node)")
	f.BoolVar(&o.controller, "controller", false, "serve the Controller service")
	f.BoolVar(&o.node, "node", false, "serve the Node service")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/urldisk-csi", "node: what is staged (state files, sockets, serve logs); keep it across driver restarts")
	f.StringVar(&o.cacheDir, "cache", "", "node: parent of the per-volume read caches (default STATE-DIR/cache)")
	return cmd
}

func runCSI(ctx context.Context, g *globals, o *csiOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	d, err := csi.New(csi.Config{Endpoint: o.endpoint, NodeID: o.nodeID, Controller: o.controller, Node: o.node,
		StateDir: o.stateDir, CacheDir: o.cacheDir, Logger: g.log})
	if err != nil {
		return err
	}
	l, err := csi.Listen(o.endpoint)
	if err != nil {
		return err
	}
	g.log.Info("csi driver serving", "endpoint", o.endpoint, "node", o.nodeID, "controller", o.controller, "node_service", o.node)
	if err := d.Serve(ctx, l); err != nil {
		return fmt.Errorf("csi: %w", err)
	}
	return nil
}
