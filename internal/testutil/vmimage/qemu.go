package vmimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/agent/workload"
)

// AccelEnv names an environment variable that forces qemu's accelerator
// ("kvm" or "tcg") instead of Accel's probe.
const AccelEnv = "URLDISK_VM_ACCEL"

// DefaultBootTimeout bounds BootVM's qemu run. A boot of the cloud kernel
// under TCG takes seconds; this leaves room for a loaded machine.
const DefaultBootTimeout = 120 * time.Second

// Accel returns "kvm" when /dev/kvm can create a VM and the CPU has
// hardware virtualisation (vmx or svm in /proc/cpuinfo), else "tcg", unless
// $URLDISK_VM_ACCEL says which. The cpuinfo check matters: some sandboxes
// offer a /dev/kvm (a paravirtual one, without vmx/svm) that creates VMs
// but cannot run a stock qemu guest (qemu aborts setting MSRs, or the guest
// never prints a line).
func Accel() string {
	if a := os.Getenv(AccelEnv); a != "" {
		return a
	}
	if workload.KVMUsable() {
		return "kvm"
	}
	return "tcg"
}

// VM describes one qemu-system-x86_64 run: a direct kernel boot (no
// firmware disk, no initramfs) with Drive as an NVMe disk that is the root
// filesystem, the serial console in SerialLog, no network, no display.
type VM struct {
	Kernel    string   // path of a bzImage, e.g. from Kernel
	Drive     string   // qemu -drive file=: an NBD URI (nbd+unix:///NAME?socket=PATH) or an image path
	Format    string   // drive format; "" means raw
	SerialLog string   // file the serial console is written to ("" means qemu's stdout)
	MemoryMiB int      // guest memory; 0 means 512
	Accel     string   // "kvm" or "tcg"; "" means Accel()
	Append    []string // extra kernel command line words, e.g. urldisk.mode=loop
	ExtraArgs []string // extra qemu arguments, e.g. -qmp unix:PATH,server=on,wait=off
}

// KernelCmdline returns the kernel command line: the root is the NVMe
// namespace, mounted read-write by the kernel, and PID 1 is /init.
func (vm VM) KernelCmdline() string {
	words := []string{
		"root=/dev/nvme0n1", "rootfstype=ext4", "rootwait", "rw",
		"console=ttyS0", "earlyprintk=serial,ttyS0", "init=/init", "panic=-1",
		"nokaslr", "mitigations=off",
		// Under TCG on a busy host the IO-APIC timer check can time out and
		// panic the boot ("IO-APIC + timer doesn't work!").
		"no_timer_check",
	}
	return strings.Join(append(words, vm.Append...), " ")
}

// Args returns qemu-system-x86_64's arguments (without the program name),
// built by agent/workload's builder, so the tests boot the command line
// the agent gives qemu machines: here with -no-reboot, one CPU, and the
// NVMe serial "urldisk".
func (vm VM) Args() []string {
	accel := vm.Accel
	if accel == "" {
		accel = Accel()
	}
	return workload.VM{
		Accel: accel, MemoryMiB: vm.MemoryMiB, CPUs: 1,
		Kernel: vm.Kernel, Append: vm.KernelCmdline(),
		Drive: vm.Drive, DriveFormat: vm.Format, NVMeSerial: "urldisk",
		ConsoleLog: vm.SerialLog, NoReboot: true, Extra: vm.ExtraArgs,
	}.Args()
}

// Command returns the qemu command for vm, bound to ctx: when ctx ends
// qemu gets SIGTERM, then SIGKILL 5 s later.
func (vm VM) Command(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, workload.QemuBinary, vm.Args()...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// BootVM boots kernel with the NBD export nbdURI as its NVMe root disk and
// the serial console in serialLog, and returns when qemu exits, at the
// latest after DefaultBootTimeout. It returns nil when qemu exited 0 (with
// -no-reboot that is a guest power-off, reboot or panic: grep serialLog to
// tell which), else an error with qemu's stderr. cmdline adds kernel command
// line words (e.g. "urldisk.mode=loop"). The boot's duration is logged.
func BootVM(ctx context.Context, t testing.TB, kernel, nbdURI, serialLog string, cmdline ...string) error {
	t.Helper()
	need(t, "qemu-system-x86_64", "qemu-system-x86")
	ctx, cancel := context.WithTimeout(ctx, DefaultBootTimeout)
	defer cancel()
	vm := VM{Kernel: kernel, Drive: nbdURI, SerialLog: serialLog, Accel: Accel(), Append: cmdline}
	cmd := vm.Command(ctx)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(10 * time.Millisecond)
	t.Logf("vmimage: qemu (%s) ran %v", vm.Accel, took)
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("vmimage: qemu output:\n%s", s)
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("qemu did not exit within %v: %v", DefaultBootTimeout, err)
	}
	if err != nil {
		return fmt.Errorf("qemu: %v\n%s", err, stderr.String())
	}
	return nil
}
