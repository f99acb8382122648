package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

func newCheckpointCommand(g *globals) *cobra.Command {
	cmd := command("checkpoint URL LABEL", "Label the volume's current state (flush + snapshot + label; O(1) in disk size)",
		exactArgs(2, "a volume URL and a label"), func(ctx context.Context, out io.Writer, args []string) error {
			if err := volume.ValidateLabel(args[1]); err != nil {
				return err
			}
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				return runCheckpoint(ctx, p, out, name, args[1])
			})
		})
	cmd.Long = `Label the volume's current state. If a urldisk serve on this host holds the
volume, it flushes and checkpoints (no second writer). Otherwise the durable
head is checkpointed by reading the log, which never disturbs a writer on
another host (unflushed writes there are not included).`
	cmd.AddCommand(command("rm URL LABEL", "Delete a checkpoint (its data is freed by the next gc)",
		exactArgs(2, "a volume URL and a label"), func(ctx context.Context, out io.Writer, args []string) error {
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				if err := p.RemoveCheckpoint(ctx, name, args[1]); err != nil {
					return err
				}
				printf(out, "removed checkpoint %s of %s\n", args[1], name)
				return nil
			})
		}))
	return cmd
}

func newCheckpointsCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := command("checkpoints URL", "List a volume's checkpoints: label, seq, time, bytes unique to it",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				cps, err := p.Checkpoints(ctx, name)
				if err != nil {
					return err
				}
				return printListing(out, asJSON, cps, "LABEL\tSEQ\tTIME\tUNIQUE", func(c volume.CheckpointInfo) string {
					return fmt.Sprintf("%s\t%d\t%s\t%s", c.Label, c.Seq, c.Time.Format(time.RFC3339), units.FormatSize(c.UniqueBytes))
				})
			})
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRestoreCommand(g *globals) *cobra.Command {
	cmd := command("restore URL LABEL|SEQ|TIME", "Reset a volume in place to a checkpoint or point in time (later checkpoints stay)",
		exactArgs(2, "a volume URL and a checkpoint label, seq or RFC 3339 time"), func(ctx context.Context, out io.Writer, args []string) error {
			pt, err := volume.ParsePoint(args[1])
			if err != nil {
				return err
			}
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				return runRestore(ctx, g, p, out, name, args[1], pt)
			})
		})
	cmd.Long = `Reset a volume in place by appending a restore record. If a urldisk serve on
this host holds the volume, it does the restore. Otherwise restore attaches
read-write, which fences any writer elsewhere.`
	return cmd
}

func newCompactCommand(g *globals) *cobra.Command {
	return command("compact URL", "Rewrite sparsely-live records so stored bytes track live data (gc then frees the old ones)",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				return runCompact(ctx, g, p, out, name)
			})
		})
}

// viaHolder asks the process on this host that holds volume name
// read-write (serve, the agent: its control socket) to do op, so no second
// writer fences it; when none does, offline does the work instead. served
// says which happened; rep is the holder's reply.
func viaHolder(ctx context.Context, p *volume.Pool, name, op string, req control.Request, offline func() error) (rep *control.Reply, served bool, err error) {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, false, err
	}
	rep, served, err = control.Call(ctx, d.ID, op, req)
	if err != nil || served {
		return rep, served, err
	}
	return nil, false, offline()
}

// runCheckpoint labels volume name's current state: through its local
// holder (flush, then label), else offline at the durable head (reading
// the log, which disturbs no writer elsewhere).
func runCheckpoint(ctx context.Context, p *volume.Pool, out io.Writer, name, label string) error {
	var c *volume.Checkpoint
	rep, served, err := viaHolder(ctx, p, name, "checkpoint", control.Request{Label: label}, func() (err error) {
		c, err = p.Checkpoint(ctx, name, label)
		return err
	})
	if err != nil {
		return err
	}
	how := "offline"
	if served {
		c, how = rep.Checkpoint, "by the serving process"
	}
	printf(out, "checkpoint %s of %s at seq %d (%s)\n", c.Label, name, c.Seq, how)
	return nil
}

// runRestore resets volume name to pt (spelled raw for the holder):
// through its local holder, else by attaching read-write, which fences a
// writer elsewhere.
func runRestore(ctx context.Context, g *globals, p *volume.Pool, out io.Writer, name, raw string, pt volume.Point) error {
	var seq uint64
	rep, served, err := viaHolder(ctx, p, name, "restore", control.Request{Point: raw}, func() error {
		return withWriter(ctx, g, p, name, func(v *volume.Volume) (err error) {
			seq, err = v.Restore(ctx, pt)
			return err
		})
	})
	if err != nil {
		return err
	}
	if served {
		seq = rep.Seq
	}
	printf(out, "restored %s to %s (seq %d)\n", name, pt, seq)
	return nil
}

// runCompact rewrites volume name's sparsely-live records: through its
// local holder, else by attaching read-write.
func runCompact(ctx context.Context, g *globals, p *volume.Pool, out io.Writer, name string) error {
	var st volume.CompactStats
	rep, served, err := viaHolder(ctx, p, name, "compact", control.Request{}, func() error {
		return withWriter(ctx, g, p, name, func(v *volume.Volume) (err error) {
			st, err = v.Compact(ctx, volume.CompactOptions{})
			return err
		})
	})
	if err != nil {
		return err
	}
	if served {
		st = *rep.Compact
	}
	printf(out, "compacted %s: %d records rewritten, %s live copied, %s dead left for gc\n",
		name, st.Records, units.FormatSize(uint64(st.LiveBytes)), units.FormatSize(uint64(st.DeadBytes)))
	return nil
}

// policyOptions are policy's flags.
type policyOptions struct {
	every         time.Duration
	hourly, daily int
	off           bool
	// changed: --every or a --keep flag was given (set, not just show).
	changed bool
}

// validate returns the policy the flags ask to set, or nil to only show
// the current one.
func (o *policyOptions) validate() (*volume.Policy, error) {
	switch {
	case o.off && o.changed:
		return nil, fmt.Errorf("policy: --off and --every/--keep-hourly/--keep-daily exclude each other")
	case o.off:
		return &volume.Policy{}, nil
	case !o.changed:
		return nil, nil
	case o.every < time.Second:
		return nil, fmt.Errorf("policy: --every must be at least 1s (or use --off)")
	}
	return &volume.Policy{Every: o.every.Truncate(time.Second), KeepHourly: o.hourly, KeepDaily: o.daily}, nil
}

func newPolicyCommand(g *globals) *cobra.Command {
	o := &policyOptions{}
	cmd := &cobra.Command{
		Use:   "policy URL [--every 1h --keep-hourly 24 --keep-daily 7 | --off]",
		Short: "Show or set a volume's automatic-checkpoint policy (taken by its writer while written)",
		Args:  exactArgs(1, "a volume URL"),
		// A RunE of its own rather than command's: which flags were given
		// (not just their values) decides between showing and setting.
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			o.changed = f.Changed("every") || f.Changed("keep-hourly") || f.Changed("keep-daily")
			set, err := o.validate()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				return runPolicy(ctx, p, cmd.OutOrStdout(), name, set)
			})
		},
	}
	cmd.Flags().DurationVar(&o.every, "every", time.Hour, "checkpoint interval while the volume is written")
	cmd.Flags().IntVar(&o.hourly, "keep-hourly", 24, "keep the newest automatic checkpoint of this many recent hours")
	cmd.Flags().IntVar(&o.daily, "keep-daily", 7, "and of this many recent days")
	cmd.Flags().BoolVar(&o.off, "off", false, "turn automatic checkpoints off")
	return cmd
}

// runPolicy stores set as volume name's policy (unless nil), then prints
// the policy in force.
func runPolicy(ctx context.Context, p *volume.Pool, out io.Writer, name string, set *volume.Policy) error {
	if set != nil {
		if err := p.SetPolicy(ctx, name, *set); err != nil {
			return err
		}
	}
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return err
	}
	pol, err := p.Policy(ctx, d.ID)
	if err != nil {
		return err
	}
	if pol.Off() {
		printf(out, "%s: automatic checkpoints off\n", name)
		return nil
	}
	printf(out, "%s: checkpoint every %v while written; keep %d hourly, %d daily\n", name, pol.Every, pol.KeepHourly, pol.KeepDaily)
	return nil
}

func newCloneCommand(g *globals) *cobra.Command {
	return command("clone SRC[@LABEL|@SEQ|@TIME] DST", "Create a volume sharing another's data from its head or any retained point (O(1) in disk size)",
		exactArgs(2, "a source volume URL (optionally @point) and a new volume name or URL in the same pool"), func(ctx context.Context, out io.Writer, args []string) error {
			sref, dst, err := cloneArgs(args[0], args[1])
			if err != nil {
				return err
			}
			return withPool(ctx, g, sref.Pool, func(p *volume.Pool) error {
				return runClone(ctx, p, out, sref, dst)
			})
		})
}

// cloneArgs parses clone's source (a volume URL, optionally @point) and
// destination: a name, or a URL that must be in the source's pool.
func cloneArgs(src, dst string) (volref.Ref, string, error) {
	sref, err := volref.Parse(src)
	if err != nil {
		return volref.Ref{}, "", err
	}
	dref, isURL, err := parseRefIfURL(dst)
	switch {
	case err != nil:
		return volref.Ref{}, "", err
	case !isURL:
		return sref, dst, nil
	case dref.Pool != sref.Pool:
		return volref.Ref{}, "", fmt.Errorf("clone: %s is not in the pool of %s; clones live in their source's pool", dref, sref)
	}
	return sref, dref.Name, nil
}

// runClone clones sref (its head or point) to a new volume dst of its pool.
func runClone(ctx context.Context, p *volume.Pool, out io.Writer, sref volref.Ref, dst string) error {
	start := time.Now()
	d, err := p.Clone(ctx, sref.Name, sref.Point, dst)
	if err != nil {
		return err
	}
	printf(out, "cloned %s@%s to %s (id %s, parent seq %d) in %v\n", sref.Name, sref.Point, d.Name, d.ID, d.Parent.Seq, time.Since(start).Round(time.Millisecond))
	return nil
}

// gcOptions are gc's flags.
type gcOptions struct {
	volume.GCOptions
	asJSON, verbose bool
}

// validate refuses negative windows (the API reads them as "none"; on the
// command line 0 says that).
func (o *gcOptions) validate() error {
	if o.Grace < 0 || o.Retention < 0 {
		return fmt.Errorf("gc: --grace and --retention must not be negative (0 means none)")
	}
	return nil
}

func newGCCommand(g *globals) *cobra.Command {
	o := &gcOptions{}
	cmd := command("gc POOL", "Delete records no live map needs (heads, checkpoints, clones, retention window)",
		exactArgs(1, "a pool URL"), func(ctx context.Context, out io.Writer, args []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return withPool(ctx, g, args[0], func(p *volume.Pool) error {
				rep, err := p.GC(ctx, explicitZero(o.GCOptions))
				if err != nil {
					return err
				}
				if o.asJSON {
					return writeJSON(out, rep)
				}
				printGC(out, rep, o.verbose)
				return nil
			})
		})
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "report without deleting")
	cmd.Flags().DurationVar(&o.Grace, "grace", time.Hour, "never delete objects younger than this")
	cmd.Flags().DurationVar(&o.Retention, "retention", volume.DefaultRetention, "keep every point of this window readable and clonable")
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&o.verbose, "verbose", "v", false, "list each object deleted and each referenced object kept")
	return cmd
}

// printGC prints what gc deleted (or would, in a dry run) and why it kept
// the rest, reasons in a stable order; verbose lists every object.
func printGC(w io.Writer, rep *volume.GCReport, verbose bool) {
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete"
	}
	if verbose {
		for _, it := range rep.Deleted {
			printf(w, "%s %s (%s): %s\n", verb, it.Key, units.FormatSize(uint64(it.Size)), it.Reason)
		}
		for _, it := range rep.Kept {
			printf(w, "kept %s (%s): %s\n", it.Key, it.Volume, it.Reason)
		}
	}
	printf(w, "%s %d objects (%s)\n", verb, len(rep.Deleted), units.FormatSize(uint64(rep.DeletedBytes)))
	for _, why := range slices.Sorted(maps.Keys(rep.KeptByReason)) {
		printf(w, "kept %d: %s\n", rep.KeptByReason[why], why)
	}
}

// explicitZero maps flags set to 0 to the API's "negative means none".
func explicitZero(o volume.GCOptions) volume.GCOptions {
	if o.Grace == 0 {
		o.Grace = -1
	}
	if o.Retention == 0 {
		o.Retention = -1
	}
	return o
}

func newDUCommand(g *globals) *cobra.Command {
	var o volume.GCOptions
	var asJSON bool
	cmd := command("du POOL", "Storage per volume: exclusive vs shared bytes, history, reclaimable garbage",
		exactArgs(1, "a pool URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withPool(ctx, g, args[0], func(p *volume.Pool) error {
				es, err := p.DU(ctx, explicitZero(o))
				if err != nil {
					return err
				}
				f := func(n int64) string { return units.FormatSize(uint64(n)) }
				return printListing(out, asJSON, es, "VOLUME\tSTORED\tLOGICAL\tEXCLUSIVE\tSHARED\tHISTORY\tGARBAGE", func(e volume.DUEntry) string {
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", e.Name, f(e.StoredBytes), f(e.LogicalBytes), f(e.ExclusiveBytes), f(e.SharedBytes), f(e.HistoryBytes), f(e.GarbageBytes))
				})
			})
		})
	cmd.Flags().DurationVar(&o.Retention, "retention", volume.DefaultRetention, "retention window assumed for garbage")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
