package runtime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/urldisk/urldisk/internal/fleet"
)

// QemuBinary is the emulator the qemu runtime runs.
const QemuBinary = "qemu-system-x86_64"

// qemuQuitGrace is how long Stop waits after QMP quit before SIGKILL.
const qemuQuitGrace = 5 * time.Second

// QemuArgs returns qemu-system-x86_64's arguments for a machine: a direct
// kernel boot with the NBD export as an NVMe disk (drive d0), the serial
// console appended to consoleLog, QMP on qmpSock, no display and no
// default devices; then the spec's extra arguments.
func QemuArgs(q fleet.QemuSpec, extra []string, nbdURI, name, consoleLog, qmpSock, accel string) []string {
	mem := q.MemoryMiB
	if mem == 0 {
		mem = 512
	}
	cpus := q.CPUs
	if cpus == 0 {
		cpus = 1
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-name", name,
		"-accel", accel,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-kernel", q.Kernel,
	}
	if q.Initrd != "" {
		args = append(args, "-initrd", q.Initrd)
	}
	if q.Append != "" {
		args = append(args, "-append", q.Append)
	}
	args = append(args,
		"-drive", "file="+qemuEscape(nbdURI)+",format=raw,if=none,id=d0,cache=none",
		"-device", "nvme,drive=d0,serial="+nvmeSerial(name),
		"-chardev", "file,id=serial0,path="+qemuEscape(consoleLog)+",append=on",
		"-serial", "chardev:serial0",
		"-qmp", "unix:"+qemuEscape(qmpSock)+",server=on,wait=off",
	)
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	return append(args, extra...)
}

// qemuEscape doubles commas, qemu's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// nvmeSerial makes an NVMe serial number (at most 20 characters) from a
// machine name.
func nvmeSerial(name string) string {
	if len(name) > 20 {
		name = name[:20]
	}
	return name
}

// Accel returns "kvm" when /dev/kvm can create a VM and the CPU has
// hardware virtualisation, else "tcg".
func Accel() string {
	if kvmUsable() {
		return "kvm"
	}
	return "tcg"
}

var hwVirt = regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`)

// kvmUsable checks /proc/cpuinfo for vmx/svm (some sandboxes offer a
// /dev/kvm a stock guest cannot run on) and that /dev/kvm creates a VM.
func kvmUsable() bool {
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !hwVirt.Match(cpuinfo) {
		return false
	}
	const (
		kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
		kvmCreateVM      = 0xAE01 // _IO(KVMIO, 0x01)
	)
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 || v != 12 {
		return false
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		return false
	}
	unix.Close(int(vm))
	return true
}

// qemu is a RuntimeQemu machine.
type qemu struct {
	*child
	qmpSock string
}

func startQemu(spec fleet.Spec, cfg Config) (*qemu, error) {
	accel := spec.Qemu.Accel
	if accel == "" {
		accel = Accel()
	}
	if err := os.MkdirAll(cfg.SocketDir, 0o700); err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	qmpSock := filepath.Join(cfg.SocketDir, "qmp")
	if err := os.Remove(qmpSock); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("machine %s: remove old QMP socket: %w", cfg.Name, err)
	}
	args := QemuArgs(*spec.Qemu, spec.Args, cfg.NBDURI, cfg.Name, filepath.Join(cfg.Dir, "console.log"), qmpSock, accel)
	cmd := exec.Command(QemuBinary, args...)
	cmd.Env = baseEnv(cfg, spec.Env)
	cmd.Dir = cfg.Dir
	c, err := startChild(cmd, filepath.Join(cfg.Dir, "qemu.log"), cfg.Cred, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	cfg.Logger.Info("qemu started", "pid", c.PID(), "accel", accel)
	return &qemu{child: c, qmpSock: qmpSock}, nil
}

// Stop powers the VM down through QMP (system_powerdown), waits up to
// grace, then asks qemu to quit, and kills it if it is still there after
// a few more seconds. Without QMP it sends SIGTERM (qemu quits on it).
func (q *qemu) Stop(ctx context.Context, grace time.Duration) error {
	select {
	case <-q.done:
		return nil
	default:
	}
	defer os.Remove(q.qmpSock)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, err := DialQMP(dctx, q.qmpSock)
	cancel()
	if err != nil {
		q.log.Warn("no QMP; stopping qemu with SIGTERM", "err", err)
		q.signalGroup(syscall.SIGTERM)
		return q.finish(ctx, grace)
	}
	defer conn.Close()
	if err := conn.Execute(ctx, "system_powerdown"); err != nil {
		q.log.Warn("QMP system_powerdown failed", "err", err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-q.done:
		return nil
	case <-t.C:
		q.log.Info("guest did not power off in time; quitting qemu", "grace", grace)
	case <-ctx.Done():
		q.signalGroup(syscall.SIGKILL)
		<-q.done
		return ctx.Err()
	}
	if err := conn.Quit(ctx); err != nil {
		q.log.Warn("QMP quit failed", "err", err)
	}
	return q.finish(ctx, qemuQuitGrace)
}
