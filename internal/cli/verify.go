package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// Exit statuses of `urldisk verify`, for cron and scripts.
const (
	verifyExitProblems    = 1 // the volume has problems (each is printed)
	verifyExitUncheckable = 2 // could not check: bad URL, no such pool or volume, store unreachable
)

type verifyOptions struct {
	deep   bool
	asJSON bool
}

func newVerifyCommand(g *globals) *cobra.Command {
	o := &verifyOptions{}
	cmd := command("verify URL [--deep] [--json]", "Check a volume's objects for loss and corruption (exit 0 healthy, 1 problems, 2 could not check)",
		verifyArgs, func(ctx context.Context, out io.Writer, args []string) error {
			return runVerify(ctx, g, out, args[0], o)
		})
	cmd.Long = `verify reads a volume without changing anything and reports what is wrong:
missing log records that were acknowledged (a later record or snapshot proves
they existed), records whose trailer fails its checksum, snapshots that do not
decode or reference missing records, checkpoints without their snapshot, a
broken name binding or descriptor, and a head that does not replay. Gaps a
crashed writer left behind (never acknowledged) are listed but are not
problems. --deep also reads every data chunk of every record and checks its
CRC (reads the whole log).

Exit status: 0 healthy, 1 problems found, 2 could not check (bad URL, no such
pool or volume, store unreachable).`
	cmd.Flags().BoolVar(&o.deep, "deep", false, "also read every data chunk and check its CRC")
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	return cmd
}

// verifyArgs is exactArgs(1) whose error exits 2: a wrong argument count is
// "could not check", like every other verify failure before the check.
func verifyArgs(cmd *cobra.Command, args []string) error {
	if err := exactArgs(1, "a volume URL")(cmd, args); err != nil {
		return &exitCodeError{code: verifyExitUncheckable, err: err}
	}
	return nil
}

// runVerify checks the volume at rawURL and prints the report on out.
func runVerify(ctx context.Context, g *globals, out io.Writer, rawURL string, o *verifyOptions) error {
	uncheckable := func(err error) error { return &exitCodeError{code: verifyExitUncheckable, err: err} }
	p, name, err := openVolumeURL(ctx, g, rawURL, false)
	if err != nil {
		return uncheckable(fmt.Errorf("verify: %w", err))
	}
	defer p.Close()
	rep, err := p.Verify(ctx, name, volume.VerifyOptions{Deep: o.deep})
	if err != nil {
		return uncheckable(err)
	}
	if o.asJSON {
		if err := writeJSON(out, rep); err != nil {
			return uncheckable(err)
		}
	} else {
		printVerifyReport(out, objstore.Redact(rawURL), rep)
	}
	if !rep.OK() {
		return &exitCodeError{code: verifyExitProblems, err: fmt.Errorf("verify %s: %d problem(s) found", name, len(rep.Problems))}
	}
	return nil
}

func printVerifyReport(w io.Writer, url string, r *volume.VerifyReport) {
	printf(w, "volume %s (id %s): %d records, %d snapshots, %d checkpoints; replay from snapshot %d reaches seq %d\n",
		url, r.ID, r.Records, r.Snapshots, r.Checkpoints, r.Base, r.Head)
	if r.Deep {
		printf(w, "deep: %d data chunks read and checked\n", r.ChunksChecked)
	}
	for _, gap := range r.Leftovers {
		printf(w, "note: %v\n", gap)
	}
	for _, p := range r.Problems {
		if p.Key != "" {
			printf(w, "PROBLEM %s %s: %s\n", p.Kind, p.Key, p.Detail)
		} else {
			printf(w, "PROBLEM %s: %s\n", p.Kind, p.Detail)
		}
	}
	if r.OK() {
		printf(w, "OK\n")
	}
}
