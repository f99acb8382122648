package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newServeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve URL [URL...]",
		Short: "Export volumes over NBD",
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("serve: not implemented yet")
		},
	}
}
