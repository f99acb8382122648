package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
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

// spec is the machine the flags describe, running args.
func (o *machineRunOptions) spec(args []string) fleet.Spec {
	spec := fleet.Spec{Volume: o.volume, Runtime: o.runtime, Args: args, Env: o.env, RunAs: o.runAs}
	if o.runtime == fleet.RuntimeQemu || o.kernel != "" {
		spec.Qemu = &fleet.QemuSpec{Kernel: o.kernel, Initrd: o.initrd, Append: o.append, MemoryMiB: o.memory, CPUs: o.cpus, Accel: o.accel}
	}
	return spec
}

// runMachine creates machine name running spec (on host, or the least
// loaded live host) and waits up to wait for it to run.
func runMachine(ctx context.Context, fc *fleetCmd, out io.Writer, name string, spec fleet.Spec, host string, wait time.Duration) error {
	p, err := fc.ops.Run(ctx, name, spec, host)
	if err != nil {
		return fmt.Errorf("machine run %s: %w", name, err)
	}
	fc.nudge(ctx, p.Host)
	printf(out, "machine %s: version %d, %s on %s\n", p.Name, p.Version, p.State, p.Host)
	if wait > 0 {
		return fc.waitRunning(ctx, out, p, wait)
	}
	return nil
}

func newMachineRunCommand(g *globals) *cobra.Command {
	o := &machineRunOptions{}
	cmd := command("run NAME --volume URL --runtime process|qemu [--host HOST] [-- ARGS...]", "Create a machine and run it on a host (the least loaded live host by default)",
		machineRunArgs, func(ctx context.Context, out io.Writer, args []string) error {
			return withFleet(ctx, g, &o.fleetFlags, func(fc *fleetCmd) error {
				return runMachine(ctx, fc, out, args[0], o.spec(args[1:]), o.host, o.wait)
			})
		})
	cmd.Long = `Create a machine and run it. For --runtime process, the arguments after --
are the command; for --runtime qemu they are extra qemu arguments, and
--kernel (and optionally --initrd, --append, --memory, --cpus) describe the VM.`
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

// machineRunArgs wants one NAME, then the workload's arguments after --.
func machineRunArgs(cmd *cobra.Command, args []string) error {
	if cmd.ArgsLenAtDash() == 0 || len(args) == 0 {
		return fmt.Errorf("machine run: expected a machine NAME before --\nusage: %s", cmd.UseLine())
	}
	if dash := cmd.ArgsLenAtDash(); dash > 1 || (dash < 0 && len(args) > 1) {
		return fmt.Errorf("machine run: expected one NAME; put the command after --\nusage: %s", cmd.UseLine())
	}
	return nil
}

// machineChange builds the stop, start and rm commands.
func machineChange(g *globals, use, short string, change func(ctx context.Context, fc *fleetCmd, name string) (*fleet.Placement, error)) *cobra.Command {
	return fleetChange(g, use+" NAME", short, exactArgs(1, "a machine NAME"), 0, "wait this long for the host to act (0: do not wait)",
		func(ctx context.Context, fc *fleetCmd, out io.Writer, args []string, wait time.Duration) error {
			p, err := change(ctx, fc, args[0])
			return reportChange(ctx, fc, out, use, args[0], p, err, wait)
		})
}

// reportChange reports the outcome of machine command use on name (p, err
// from the fleet) and waits up to wait for the host to act on it.
func reportChange(ctx context.Context, fc *fleetCmd, out io.Writer, use, name string, p *fleet.Placement, err error, wait time.Duration) error {
	if errors.Is(err, fleet.ErrNoChange) {
		printf(out, "machine %s: already %s on %s (version %d)\n", p.Name, p.State, p.Host, p.Version)
		return nil
	}
	if err != nil {
		return fmt.Errorf("machine %s %s: %w", use, name, err)
	}
	fc.nudge(ctx, p.Host, p.From)
	printf(out, "machine %s: version %d, %s on %s\n", p.Name, p.Version, p.State, p.Host)
	switch {
	case wait <= 0:
		return nil
	case p.State == fleet.Running:
		return fc.waitRunning(ctx, out, p, wait)
	default:
		return fc.waitStopped(ctx, out, p, wait)
	}
}

func newMachineStopCommand(g *globals) *cobra.Command {
	return machineChange(g, "stop", "Stop a machine (flushing its volume); it stays placed on its host",
		func(ctx context.Context, fc *fleetCmd, name string) (*fleet.Placement, error) {
			return fc.ops.Stop(ctx, name)
		})
}

func newMachineStartCommand(g *globals) *cobra.Command {
	return machineChange(g, "start", "Start a stopped machine on its host (or the least loaded live host if its own is gone)",
		func(ctx context.Context, fc *fleetCmd, name string) (*fleet.Placement, error) {
			return fc.ops.Start(ctx, name)
		})
}

func newMachineRmCommand(g *globals) *cobra.Command {
	return machineChange(g, "rm", "Remove a machine (stopping it); its volume stays",
		func(ctx context.Context, fc *fleetCmd, name string) (*fleet.Placement, error) {
			return fc.ops.Remove(ctx, name)
		})
}

func newMachineLsCommand(g *globals) *cobra.Command {
	var all bool // include removed machines
	cmd := fleetListing(g, "ls", "List machines: name, desired state, host, what the host reports",
		func(out io.Writer, v *fleet.View, asJSON bool) error {
			return printMachines(out, v, all, asJSON)
		})
	cmd.Flags().BoolVar(&all, "all", false, "include removed machines")
	return cmd
}

// machineRow is one machine as `urldisk machine ls` lists it.
type machineRow struct {
	Name    string               `json:"name"`
	State   fleet.State          `json:"state"`
	Host    string               `json:"host"`
	Version uint64               `json:"version"`
	Runtime string               `json:"runtime"`
	Volume  string               `json:"volume"`
	Actual  fleet.Phase          `json:"actual,omitempty"`
	Status  *fleet.MachineStatus `json:"status,omitempty"`
}

// machineRows lists v's machines by name, with what their hosts report;
// removed ones only with all. Volume URLs are redacted.
func machineRows(v *fleet.View, all bool) []machineRow {
	var rows []machineRow
	for _, p := range v.Placements {
		if p.State == fleet.Deleted && !all {
			continue
		}
		r := machineRow{Name: p.Name, State: p.State, Host: p.Host, Version: p.Version, Runtime: p.Spec.Runtime, Volume: objstore.Redact(p.Spec.Volume)}
		if hb := v.Heartbeats[p.Host]; hb != nil {
			if st, ok := hb.Machine(p.Name); ok {
				r.Actual, r.Status = st.Phase, &st
			}
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows
}

// printMachines prints v's machines as JSON or a table.
func printMachines(w io.Writer, v *fleet.View, all, asJSON bool) error {
	return printListing(w, asJSON, machineRows(v, all), "NAME\tSTATE\tHOST\tVERSION\tACTUAL\tRUNTIME\tVOLUME", func(r machineRow) string {
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
		return fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%s\t%s", r.Name, r.State, r.Host, r.Version, actual, r.Runtime, r.Volume)
	})
}

func newMigrateCommand(g *globals) *cobra.Command {
	cmd := fleetChange(g, "migrate NAME HOST", "Move a machine to another host (no bytes copied) and report its downtime",
		exactArgs(2, "a machine NAME and a HOST"), 5*time.Minute, "wait this long for the machine to run on the new host (0: do not wait)",
		func(ctx context.Context, fc *fleetCmd, out io.Writer, args []string, wait time.Duration) error {
			return runMigrate(ctx, fc, out, args[0], args[1], wait)
		})
	cmd.Long = `Move a machine to HOST: the new placement version names HOST; the old host
stops the machine and flushes its volume, the new host attaches it (fencing
the old writer) and starts it. Waits until the new host serves the machine's
first request and prints the downtime (old stop → new first I/O).`
	return cmd
}

// runMigrate moves machine name to host and, waiting up to wait, reports
// its downtime there.
func runMigrate(ctx context.Context, fc *fleetCmd, out io.Writer, name, host string, wait time.Duration) error {
	p, err := fc.ops.Migrate(ctx, name, host)
	if errors.Is(err, fleet.ErrNoChange) {
		printf(out, "machine %s is already on %s\n", name, host)
		return nil
	}
	if err != nil {
		return fmt.Errorf("migrate %s to %s: %w", name, host, err)
	}
	fc.nudge(ctx, p.Host, p.From)
	printf(out, "machine %s: version %d moves %s → %s\n", p.Name, p.Version, orDash(p.From), p.Host)
	if p.State != fleet.Running || wait <= 0 {
		return nil
	}
	return fc.waitRunning(ctx, out, p, wait)
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
