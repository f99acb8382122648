package cli

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

func newPoolCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Manage pools (object-store prefixes holding volumes)"}
	cmd.AddCommand(command("init POOL", "Initialise a pool: probe conditional writes and write the pool marker",
		exactArgs(1, "a pool URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return runPoolInit(ctx, g, out, args[0])
		}))
	return cmd
}

// runPoolInit initialises the pool at rawURL (unless it would nest in
// another) and says whether writers can use it.
func runPoolInit(ctx context.Context, g *globals, out io.Writer, rawURL string) error {
	if err := refuseNestedPool(ctx, rawURL); err != nil {
		return err
	}
	store, err := objstore.Open(ctx, rawURL)
	if err != nil {
		return err
	}
	defer store.Close()
	p, err := volume.InitPool(ctx, store, volume.PoolOptions{Logger: g.log})
	if err != nil {
		return err
	}
	m := p.Marker()
	printf(out, "pool %s ready (conditional create: %v)\n", objstore.Redact(rawURL), m.ConditionalCreate)
	if !m.ConditionalCreate {
		// A pool no writer may use is legitimate (a read-only mirror),
		// but nobody should find out at attach time.
		printf(out, "WARNING: %s does not honour conditional create: read-write attach and `urldisk create` will be refused in this pool; only --read-only serving works\n",
			objstore.Describe(ctx, store))
	}
	return nil
}
