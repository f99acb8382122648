// Package workload starts and stops the workloads of urldisk machines: a
// process given the NBD URI of its volume (KindProcess), or a qemu VM whose
// NVMe root disk is that NBD export (KindQemu). It takes its own Spec, not
// the fleet's: the agent converts a placement's spec, so this package
// knows nothing of placements (and testutil/vmimage can share its qemu
// command line and KVM check).
//
// Start returns a Machine that owns one goroutine (the child's waiter),
// which ends when the child exits; Stop always makes the child exit (a
// graceful request first, SIGKILL after the grace time). Children run in
// their own process group, get SIGKILL if the agent dies, and see only a
// minimal environment (never the agent's credentials).
package workload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Environment variables a machine's process is given.
const (
	EnvNBDURI  = "URLDISK_NBD_URI"
	EnvMachine = "URLDISK_MACHINE"
	EnvHost    = "URLDISK_HOST"
)

// Kinds of workload.
const (
	// KindProcess runs Spec.Args as a command with EnvNBDURI in its
	// environment.
	KindProcess = "process"
	// KindQemu runs QemuBinary with the volume as its NVMe root disk;
	// Spec.Args are extra qemu arguments.
	KindQemu = "qemu"
)

// ErrInvalid: a spec this package cannot run (unknown kind, missing
// command or qemu settings).
var ErrInvalid = errors.New("invalid workload spec")

// Spec is what a machine runs.
type Spec struct {
	// Kind is KindProcess or KindQemu.
	Kind string
	// Args: for a process, the command and its arguments; for qemu, extra
	// qemu arguments.
	Args []string
	// Env adds KEY=VALUE pairs to the minimal environment.
	Env []string
	// Qemu is the VM of KindQemu.
	Qemu *QemuSpec
}

// QemuSpec is a qemu workload's VM. Paths are local to this host.
type QemuSpec struct {
	Kernel, Initrd, Append string
	// MemoryMiB is the guest memory, 0 meaning 512; CPUs 0 means 1.
	MemoryMiB, CPUs int
	// Accel forces "kvm" or "tcg"; "" means Accel().
	Accel string
}

// check refuses a spec Start could not run.
func (s *Spec) check() error {
	switch s.Kind {
	case KindProcess:
		if len(s.Args) == 0 || s.Args[0] == "" {
			return fmt.Errorf("%w: a process needs a command", ErrInvalid)
		}
	case KindQemu:
		if s.Qemu == nil || s.Qemu.Kernel == "" {
			return fmt.Errorf("%w: qemu needs a kernel", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: unknown kind %q (want %s or %s)", ErrInvalid, s.Kind, KindProcess, KindQemu)
	}
	return nil
}

// Config is what Start needs besides the spec.
type Config struct {
	// Name is the machine's name; Host the agent's id.
	Name, Host string
	// NBDURI is the volume's export (nbd+unix:///NAME?socket=PATH).
	NBDURI string
	// Dir is the machine's directory on this host: logs go there
	// (console.log, qemu.log) and a process runs in it.
	Dir string
	// SocketDir holds short-path sockets (the qemu QMP socket). It must be
	// writable by Cred's user.
	SocketDir string
	// Cred, if set, is the user and groups the workload runs as (the agent
	// must be root); nil runs it as the agent's user. Dir must be usable
	// by that user (the process starts in it).
	Cred *syscall.Credential
	// Home is $HOME for the workload; "" passes the agent's.
	Home string
	// Logger receives lifecycle events; nil discards.
	Logger *slog.Logger
}

// Machine is a started workload.
type Machine interface {
	// PID is the child's process id.
	PID() int
	// Done is closed once the child has exited and been reaped.
	Done() <-chan struct{}
	// ExitCode is the child's exit status after Done: -1 if a signal
	// killed it.
	ExitCode() int
	// Stop asks the workload to end (process: SIGTERM to its group; qemu:
	// ACPI power-down over QMP, then QMP quit), waits up to grace, then
	// kills the group with SIGKILL, and returns once the child exited. If
	// ctx ends first it kills at once and returns ctx's error after the
	// child exited.
	Stop(ctx context.Context, grace time.Duration) error
}

// Start starts the workload of spec.
func Start(spec Spec, cfg Config) (Machine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := spec.check(); err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	if spec.Kind == KindQemu {
		return startQemu(spec, cfg)
	}
	return startProcess(spec, cfg)
}

// Check verifies on this host what Start will need (the command or qemu
// and the kernel exist), so a machine that cannot start fails before its
// volume is attached.
func Check(spec Spec) error {
	if err := spec.check(); err != nil {
		return err
	}
	switch spec.Kind {
	case KindProcess:
		if _, err := exec.LookPath(spec.Args[0]); err != nil {
			return fmt.Errorf("command %q: %w", spec.Args[0], err)
		}
	case KindQemu:
		if _, err := exec.LookPath(QemuBinary); err != nil {
			return fmt.Errorf("%s not found (install the Debian package qemu-system-x86): %w", QemuBinary, err)
		}
		for _, p := range []string{spec.Qemu.Kernel, spec.Qemu.Initrd} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("qemu: %w", err)
			}
		}
	}
	return nil
}

// baseEnv is the environment of every child: a few harmless variables of
// the agent's, the URLDISK_ ones, then the spec's.
func baseEnv(cfg Config, extra []string) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "LANG", "TZ", "TMPDIR"} {
		if k == "HOME" && cfg.Home != "" {
			env = append(env, "HOME="+cfg.Home)
			continue
		}
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	if _, ok := os.LookupEnv("PATH"); !ok {
		env = append(env, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
	}
	env = append(env, EnvNBDURI+"="+cfg.NBDURI, EnvMachine+"="+cfg.Name, EnvHost+"="+cfg.Host)
	return append(env, extra...)
}

// child is a started command and its waiter.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	code int // set before done is closed
	log  *slog.Logger
}

// startChild starts cmd in its own process group with output appended to
// logPath, and a goroutine that reaps it.
func startChild(cmd *exec.Cmd, logPath string, cred *syscall.Credential, log *slog.Logger) (*child, error) {
	// O_NOFOLLOW: a run-as workload owns the directory and could leave a
	// symlink here for the agent to append its output through.
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open workload log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Setpgid: Stop signals the whole group. Pdeathsig: if the agent dies,
	// its workloads die too (a dead agent serves no NBD anyway).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(cmd.Path), err)
	}
	c := &child{cmd: cmd, done: make(chan struct{}), log: log}
	go func() {
		err := cmd.Wait()
		out.Close()
		c.code = cmd.ProcessState.ExitCode()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			log.Warn("waiting for the workload failed", "err", err)
		}
		close(c.done)
	}()
	return c, nil
}

func (c *child) PID() int              { return c.cmd.Process.Pid }
func (c *child) Done() <-chan struct{} { return c.done }
func (c *child) ExitCode() int {
	<-c.done
	return c.code
}

// signalGroup signals the child's process group (and the child itself, in
// case it left the group).
func (c *child) signalGroup(sig syscall.Signal) {
	pid := c.cmd.Process.Pid
	_ = syscall.Kill(-pid, sig)
	_ = syscall.Kill(pid, sig)
}

// finish waits up to grace for the child after a graceful request, then
// kills its group.
func (c *child) finish(ctx context.Context, grace time.Duration) error {
	if ctx.Err() != nil {
		// A cancelled caller kills at once, whether or not SIGTERM already
		// ended the process: select would pick between the two at random.
		c.signalGroup(syscall.SIGKILL)
		<-c.done
		return ctx.Err()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
		c.log.Warn("workload did not stop in time; killing it", "grace", grace)
	case <-ctx.Done():
	}
	c.signalGroup(syscall.SIGKILL)
	<-c.done
	return ctx.Err()
}

// process is a KindProcess machine.
type process struct{ *child }

func startProcess(spec Spec, cfg Config) (*process, error) {
	cmd := exec.Command(spec.Args[0], spec.Args[1:]...)
	cmd.Env = baseEnv(cfg, spec.Env)
	cmd.Dir = cfg.Dir
	c, err := startChild(cmd, filepath.Join(cfg.Dir, "console.log"), cfg.Cred, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	cfg.Logger.Info("process started", "pid", c.PID(), "command", strings.Join(spec.Args, " "))
	return &process{c}, nil
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *process) Stop(ctx context.Context, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.signalGroup(syscall.SIGTERM)
	return p.finish(ctx, grace)
}
