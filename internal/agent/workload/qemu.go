package workload

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
)

// QemuBinary is the emulator of qemu workloads.
const QemuBinary = "qemu-system-x86_64"

// qemuQuitGrace is how long Stop waits after QMP quit before SIGKILL.
const qemuQuitGrace = 5 * time.Second

// VM is one qemu-system-x86_64 run: a direct kernel boot with Drive as an
// NVMe disk (drive d0), no display and no default devices. The agent's
// qemu workloads and the test helper testutil/vmimage both build their
// command lines with it, so tests boot the VMs machines get.
type VM struct {
	// Name is qemu's -name; "" gives none.
	Name string
	// Accel is "kvm" or "tcg"; kvm adds -cpu host (TCG keeps qemu's
	// default CPU model, which boots faster there than -cpu max).
	Accel string
	// MemoryMiB is the guest memory, 0 meaning 512; CPUs 0 means 1.
	MemoryMiB, CPUs int
	// Kernel is the bzImage to boot; Initrd and Append are optional.
	Kernel, Initrd, Append string
	// Drive is -drive file=: an NBD URI or an image path; DriveFormat ""
	// means raw.
	Drive, DriveFormat string
	// NVMeSerial is the disk's serial number (cut to NVMe's 20 characters).
	NVMeSerial string
	// ConsoleLog is the file the serial console is appended to; "" sends
	// it to qemu's stdout.
	ConsoleLog string
	// QMPSocket is the unix socket QMP listens on; "" gives no QMP.
	QMPSocket string
	// NoReboot makes a guest reboot (or panic, with panic=-1) exit qemu.
	NoReboot bool
	// Extra are further qemu arguments, last.
	Extra []string
}

// Args returns qemu-system-x86_64's arguments (without the program name).
func (vm VM) Args() []string {
	mem := vm.MemoryMiB
	if mem == 0 {
		mem = 512
	}
	cpus := vm.CPUs
	if cpus == 0 {
		cpus = 1
	}
	format := vm.DriveFormat
	if format == "" {
		format = "raw"
	}
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"}
	if vm.Name != "" {
		args = append(args, "-name", vm.Name)
	}
	args = append(args,
		"-accel", vm.Accel,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-kernel", vm.Kernel,
	)
	if vm.Initrd != "" {
		args = append(args, "-initrd", vm.Initrd)
	}
	if vm.Append != "" {
		args = append(args, "-append", vm.Append)
	}
	args = append(args,
		"-drive", "file="+qemuEscape(vm.Drive)+",format="+format+",if=none,id=d0,cache=none",
		"-device", "nvme,drive=d0,serial="+qemuEscape(nvmeSerial(vm.NVMeSerial)),
	)
	if vm.ConsoleLog != "" {
		args = append(args,
			"-chardev", "file,id=serial0,path="+qemuEscape(vm.ConsoleLog)+",append=on",
			"-serial", "chardev:serial0")
	} else {
		args = append(args, "-serial", "stdio")
	}
	if vm.QMPSocket != "" {
		args = append(args, "-qmp", "unix:"+qemuEscape(vm.QMPSocket)+",server=on,wait=off")
	}
	if vm.NoReboot {
		args = append(args, "-no-reboot")
	}
	if vm.Accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	return append(args, vm.Extra...)
}

// qemuEscape doubles commas, qemu's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// nvmeSerial cuts a serial number to NVMe's 20 characters.
func nvmeSerial(name string) string {
	if len(name) > 20 {
		name = name[:20]
	}
	return name
}

// Accel returns "kvm" when /dev/kvm can create a VM and the CPU has
// hardware virtualisation, else "tcg".
func Accel() string {
	if KVMUsable() {
		return "kvm"
	}
	return "tcg"
}

var hwVirt = regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`)

// KVMUsable reports whether qemu can use KVM here: /proc/cpuinfo has vmx
// or svm (some sandboxes offer a paravirtual /dev/kvm that creates VMs but
// cannot run a stock qemu guest: qemu aborts setting MSRs, or the guest
// never prints a line) and /dev/kvm creates a VM.
func KVMUsable() bool {
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

// qemu is a KindQemu machine.
type qemu struct {
	*child
	qmpSock string
}

func startQemu(spec Spec, cfg Config) (*qemu, error) {
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
	q := spec.Qemu
	vm := VM{
		Name: cfg.Name, Accel: accel, MemoryMiB: q.MemoryMiB, CPUs: q.CPUs,
		Kernel: q.Kernel, Initrd: q.Initrd, Append: q.Append,
		Drive: cfg.NBDURI, NVMeSerial: cfg.Name,
		ConsoleLog: filepath.Join(cfg.Dir, "console.log"), QMPSocket: qmpSock,
		Extra: spec.Args,
	}
	cmd := exec.Command(QemuBinary, vm.Args()...)
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
