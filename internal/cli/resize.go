package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volume"
)

func newResizeCommand(g *globals) *cobra.Command {
	var size string
	cmd := command("resize URL --size SIZE", "Grow a volume (a resize record in its log; shrinking is refused)",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			if size == "" {
				return fmt.Errorf("resize: --size is required (e.g. --size 20G)")
			}
			n, err := units.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				return runResize(ctx, g, p, out, name, n)
			})
		})
	cmd.Flags().StringVar(&size, "size", "", "new volume size, e.g. 20G (a multiple of the block size, not below the current size)")
	cmd.Long = `Grow a volume by appending a resize record: views of earlier points
(checkpoints, clones, point-in-time reads) keep the old size. If a urldisk
serve on this host holds the volume, it does the resize; otherwise resize
attaches read-write, which fences any writer elsewhere. NBD clients
connected before the resize keep the old size (NBD has no resize
notification): reconnect to see the new one.`
	return cmd
}

// runResize grows volume name to size bytes through its local holder, else
// by attaching read-write.
func runResize(ctx context.Context, g *globals, p *volume.Pool, out io.Writer, name string, size uint64) error {
	_, _, err := viaHolder(ctx, p, name, "resize", control.Request{Size: size}, func() error {
		return withWriter(ctx, g, p, name, func(v *volume.Volume) error {
			return v.Resize(ctx, size)
		})
	})
	if err != nil {
		return err
	}
	printf(out, "resized %s to %s (%d bytes)\n", name, units.FormatSize(size), size)
	return nil
}
