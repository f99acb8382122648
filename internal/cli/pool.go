package cli

import (
	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

func newPoolCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Manage pools (object-store prefixes holding volumes)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "init POOL",
		Short: "Initialise a pool: probe conditional writes and write the pool marker",
		Args:  exactArgs(1, "a pool URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := refuseNestedPool(ctx, args[0]); err != nil {
				return err
			}
			store, err := objstore.Open(ctx, args[0])
			if err != nil {
				return err
			}
			defer store.Close()
			p, err := volume.InitPool(ctx, store, volume.PoolOptions{Logger: g.log})
			if err != nil {
				return err
			}
			m := p.Marker()
			printf(cmd.OutOrStdout(), "pool %s ready (conditional create: %v)\n", objstore.Redact(args[0]), m.ConditionalCreate)
			return nil
		},
	})
	return cmd
}
