package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
)

func newMachineCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "machine",
		Short: "Run, stop, start, remove and list machines (a volume plus a process or qemu VM)",
		Long: `A machine is a name, a volume URL and a runtime: "process" runs a command
with $URLDISK_NBD_URI (the volume's NBD URI) and $URLDISK_MACHINE in its
environment; "qemu" boots a VM whose NVMe root disk is the volume. Machines
are placed on hosts running ` + "`urldisk agent`" + `; their desired state lives in
the fleet store. Every command takes --fleet URL (or $URLDISK_FLEET) and
tells the agents concerned to act at once when it has the API token
(--token-file or $URLDISK_TOKEN); without it they act within a heartbeat.`,
	}
	cmd.AddCommand(newMachineRunCommand(g), newMachineStopCommand(g), newMachineStartCommand(g),
		newMachineRmCommand(g), newMachineLsCommand(g))
	return cmd
}

type machineRunOptions struct {
	fleetFlags
	volume  string
	runtime string
	host    string
	env     []string
	kernel  string
	initrd  string
	append  string
	memory  int
	cpus    int
	accel   string
	runAs   string
	wait    time.Duration
}

func newMachineRunCommand(g *globals) *cobra.Command {
	o := &machineRunOptions{}
	cmd := &cobra.Command{
		Use:   "run NAME --volume URL --runtime process|qemu [--host HOST] [-- ARGS...]",
		Short: "Create a machine and run it on a host (the least loaded live host by default)",
		Long: `Create a machine and run it. For --runtime process, the arguments after --
are the command; for --runtime qemu they are extra qemu arguments, and
--kernel (and optionally --initrd, --append, --memory, --cpus) describe the VM.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() == 0 || len(args) == 0 {
				return fmt.Errorf("machine run: expected a machine NAME before --\nusage: %s", cmd.UseLine())
			}
			if dash := cmd.ArgsLenAtDash(); dash > 1 || (dash < 0 && len(args) > 1) {
				return fmt.Errorf("machine run: expected one NAME; put the command after --\nusage: %s", cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			spec := fleet.Spec{Volume: o.volume, Runtime: o.runtime, Args: args[1:], Env: o.env, RunAs: o.runAs}
			if o.runtime == fleet.RuntimeQemu || o.kernel != "" {
				spec.Qemu = &fleet.QemuSpec{Kernel: o.kernel, Initrd: o.initrd, Append: o.append, MemoryMiB: o.memory, CPUs: o.cpus, Accel: o.accel}
			}
			fc, err := openFleetCmd(cmd, g, &o.fleetFlags)
			if err != nil {
				return err
			}
			defer fc.close()
			p, err := fc.ops.Run(ctx, args[0], spec, o.host)
			if err != nil {
				return fmt.Errorf("machine run %s: %w", args[0], err)
			}
			fc.nudge(ctx, p.Host)
			printf(cmd.OutOrStdout(), "machine %s: version %d, %s on %s\n", p.Name, p.Version, p.State, p.Host)
			if o.wait > 0 {
				return fc.waitRunning(ctx, cmd.OutOrStdout(), p, o.wait)
			}
			return nil
		},
	}
	f := cmd.Flags()
	o.fleetFlags.register(f, true)
	f.StringVar(&o.volume, "volume", "", "the machine's volume URL (<pool>/<name>; required)")
	f.StringVar(&o.runtime, "runtime", "", "process or qemu (required)")
	f.StringVar(&o.host, "host", "", "host to run on (default: the least loaded live host)")
	f.StringArrayVar(&o.env, "env", nil, "KEY=VALUE added to a process machine's environment (repeatable)")
	f.StringVar(&o.kernel, "kernel", "", "qemu: kernel image path (on every host)")
	f.StringVar(&o.initrd, "initrd", "", "qemu: initramfs path")
	f.StringVar(&o.append, "append", "", "qemu: kernel command line")
	f.IntVar(&o.memory, "memory", 0, "qemu: memory in MiB (default 512)")
	f.IntVar(&o.cpus, "cpus", 0, "qemu: virtual CPUs (default 1)")
	f.StringVar(&o.accel, "accel", "", "qemu: kvm or tcg (default: kvm when /dev/kvm works)")
	f.StringVar(&o.runAs, "run-as", "", "local user (NAME or UID:GID) the workload runs as; needs agents running as root (default: the agent's user, which can reach every machine's disk and the API token)")
	f.DurationVar(&o.wait, "wait", 0, "wait this long for the machine to run (0: do not wait)")
	return cmd
}

// machineChange builds the stop, start and rm commands.
func machineChange(g *globals, use, short string, change func(fc *fleetCmd, cmd *cobra.Command, name string) (*fleet.Placement, error)) *cobra.Command {
	o := &fleetFlags{}
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs(1, "a machine NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			fc, err := openFleetCmd(cmd, g, o)
			if err != nil {
				return err
			}
			defer fc.close()
			p, err := change(fc, cmd, args[0])
			out := cmd.OutOrStdout()
			if errors.Is(err, fleet.ErrNoChange) {
				printf(out, "machine %s: already %s on %s (version %d)\n", p.Name, p.State, p.Host, p.Version)
				return nil
			}
			if err != nil {
				return fmt.Errorf("machine %s %s: %w", use, args[0], err)
			}
			fc.nudge(ctx, p.Host, p.From)
			printf(out, "machine %s: version %d, %s on %s\n", p.Name, p.Version, p.State, p.Host)
			if wait > 0 {
				if p.State == fleet.Running {
					return fc.waitRunning(ctx, out, p, wait)
				}
				return fc.waitStopped(ctx, out, p, wait)
			}
			return nil
		},
	}
	o.register(cmd.Flags(), true)
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait this long for the host to act (0: do not wait)")
	return cmd
}

func newMachineStopCommand(g *globals) *cobra.Command {
	return machineChange(g, "stop", "Stop a machine (flushing its volume); it stays placed on its host",
		func(fc *fleetCmd, cmd *cobra.Command, name string) (*fleet.Placement, error) {
			return fc.ops.Stop(cmd.Context(), name)
		})
}

func newMachineStartCommand(g *globals) *cobra.Command {
	return machineChange(g, "start", "Start a stopped machine on its host (or the least loaded live host if its own is gone)",
		func(fc *fleetCmd, cmd *cobra.Command, name string) (*fleet.Placement, error) {
			return fc.ops.Start(cmd.Context(), name)
		})
}

func newMachineRmCommand(g *globals) *cobra.Command {
	return machineChange(g, "rm", "Remove a machine (stopping it); its volume stays",
		func(fc *fleetCmd, cmd *cobra.Command, name string) (*fleet.Placement, error) {
			return fc.ops.Remove(cmd.Context(), name)
		})
}

func newMachineLsCommand(g *globals) *cobra.Command {
	o := &fleetFlags{}
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List machines: name, desired state, host, what the host reports",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			fc, err := openFleetCmd(cmd, g, o)
			if err != nil {
				return err
			}
			defer fc.close()
			v, err := fc.ops.View(ctx)
			if err != nil {
				return err
			}
			type row struct {
				Name    string               `json:"name"`
				State   fleet.State          `json:"state"`
				Host    string               `json:"host"`
				Version uint64               `json:"version"`
				Runtime string               `json:"runtime"`
				Volume  string               `json:"volume"`
				Actual  fleet.Phase          `json:"actual,omitempty"`
				Status  *fleet.MachineStatus `json:"status,omitempty"`
			}
			var rows []row
			for _, p := range v.Placements {
				if p.State == fleet.Deleted && !all {
					continue
				}
				r := row{Name: p.Name, State: p.State, Host: p.Host, Version: p.Version, Runtime: p.Spec.Runtime, Volume: objstore.Redact(p.Spec.Volume)}
				if hb := v.Heartbeats[p.Host]; hb != nil {
					if st, ok := hb.Machine(p.Name); ok {
						r.Actual, r.Status = st.Phase, &st
					}
				}
				rows = append(rows, r)
			}
			sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			printf(tw, "NAME\tSTATE\tHOST\tVERSION\tACTUAL\tRUNTIME\tVOLUME\n")
			for _, r := range rows {
				actual := string(r.Actual)
				if actual == "" {
					actual = "-"
				}
				if r.Status != nil && r.Status.Phase == fleet.PhaseExited {
					actual = fmt.Sprintf("exited(%d)", r.Status.ExitCode)
				}
				if v.State(r.Host) != fleet.HostLive && r.State == fleet.Running {
					actual += " (host " + v.State(r.Host).String() + ")"
				}
				printf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Name, r.State, r.Host, r.Version, actual, r.Runtime, r.Volume)
			}
			return tw.Flush()
		},
	}
	o.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&all, "all", false, "include removed machines")
	return cmd
}

func newMigrateCommand(g *globals) *cobra.Command {
	o := &fleetFlags{}
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "migrate NAME HOST",
		Short: "Move a machine to another host (no bytes copied) and report its downtime",
		Long: `Move a machine to HOST: the new placement version names HOST; the old host
stops the machine and flushes its volume, the new host attaches it (fencing
the old writer) and starts it. Waits until the new host serves the machine's
first request and prints the downtime (old stop → new first I/O).`,
		Args: exactArgs(2, "a machine NAME and a HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			fc, err := openFleetCmd(cmd, g, o)
			if err != nil {
				return err
			}
			defer fc.close()
			out := cmd.OutOrStdout()
			p, err := fc.ops.Migrate(ctx, args[0], args[1])
			if errors.Is(err, fleet.ErrNoChange) {
				printf(out, "machine %s is already on %s\n", args[0], args[1])
				return nil
			}
			if err != nil {
				return fmt.Errorf("migrate %s to %s: %w", args[0], args[1], err)
			}
			fc.nudge(ctx, p.Host, p.From)
			printf(out, "machine %s: version %d moves %s → %s\n", p.Name, p.Version, orDash(p.From), p.Host)
			if p.State != fleet.Running || wait <= 0 {
				return nil
			}
			return fc.waitRunning(ctx, out, p, wait)
		},
	}
	o.register(cmd.Flags(), true)
	cmd.Flags().DurationVar(&wait, "wait", 5*time.Minute, "wait this long for the machine to run on the new host (0: do not wait)")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// describeRun formats a machine's status on its new host.
func describeRun(st fleet.MachineStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (version %d, epoch %d)", st.Phase, st.Version, st.Epoch)
	if st.Downtime > 0 {
		fmt.Fprintf(&b, ", down %v", st.Downtime.Round(time.Millisecond))
	}
	return b.String()
}
