// Package cli holds urldisk's cobra commands: one constructor per command,
// an options struct, and a run function (wired by command) that calls plain
// functions writing to the command's output. cmd/urldisk only calls Main.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// globals are flags shared by every command.
type globals struct {
	logLevel string
	log      *slog.Logger
	// keys: where encrypted volumes' key-encryption key comes from.
	keys keyFlags
}

// Main runs the CLI with os.Args and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := NewRootCommand()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "urldisk: %v\n", err)
		// Commands with a documented status of their own (serve: 3 when
		// fenced) say so through the error.
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

// NewRootCommand builds the urldisk command tree.
func NewRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "urldisk",
		Short: "Disks whose durable state is a URL in an object store",
		Long: `urldisk stores virtual disks ("volumes") as logs of immutable objects in
S3-compatible stores, file:// directories or mem://, and exports them as
block devices over NBD. FLUSH means durable in the object store; exactly one
writer per volume, fenced by the store's conditional writes.

Volume URLs are <pool>/<name>, e.g.
  file:///var/lib/urldisk/pool/web-1
  s3://bucket/pool/web-1?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true
Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never the URL.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			lvl := slog.LevelInfo
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
			}
			g.log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			slog.SetDefault(g.log)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	g.keys.register(root, true, "", "key-encryption key of encrypted volumes (else $"+keyEnv+")")
	root.AddCommand(
		newPoolCommand(g),
		newCreateCommand(g),
		newLsCommand(g),
		newInfoCommand(g),
		newRmCommand(g),
		newImportCommand(g),
		newExportCommand(g),
		newServeCommand(g),
		newCheckpointCommand(g),
		newCheckpointsCommand(g),
		newRestoreCommand(g),
		newResizeCommand(g),
		newCloneCommand(g),
		newCompactCommand(g),
		newPolicyCommand(g),
		newGCCommand(g),
		newDUCommand(g),
		newVerifyCommand(g),
		newRekeyCommand(g),
		newCSICommand(g),
		newAgentCommand(g), newMachineCommand(g), newMigrateCommand(g), newDrainCommand(g), newUndrainCommand(g), newHostsCommand(g),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a message naming what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s: expected %s, got %d argument(s)\nusage: %s", cmd.Name(), what, len(args), cmd.UseLine())
		}
		return nil
	}
}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }

// isTerminal reports whether f is a terminal (for progress bars).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && !strings.HasPrefix(os.Getenv("TERM"), "dumb")
}
