// Command guestinit is the PID 1 of the test VMs that vmimage builds. It is
// built as a static linux/amd64 binary and placed at /init and /sbin/init of
// the root filesystem; the kernel mounts that filesystem read-write itself
// (root=... rw on the command line), so no initramfs is involved.
//
// It keeps a decimal counter in /data/counter (0 when missing) and prints
// every value it makes durable to the console as
//
//	URLDISK-GUEST counter=N
//
// The mode comes from the kernel command line parameter urldisk.mode:
//
//   - once (the default): increment the counter once, make it durable
//     (write to a temporary file, fsync it, rename it over /data/counter,
//     fsync /data, sync), remount / read-only so the filesystem is clean on
//     the disk with nothing left in its journal, print "URLDISK-GUEST
//     poweroff" and power the machine off. With qemu's -no-reboot the qemu
//     process then exits 0.
//   - loop: increment the counter the same durable way every
//     urldisk.interval (a Go duration, default 1s), printing each value,
//     forever. Meant for tests that move a running machine between hosts
//     mid-run: the counter must keep rising by one with no gap or repeat
//     across the move. The machine never powers itself off; stop it from
//     outside.
//
// Other console lines it prints: "URLDISK-GUEST boot mode=M" first, and
// "URLDISK-GUEST error: ..." on any failure, after which it powers off
// without incrementing further (so a test sees the error rather than a
// kernel panic).
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dataDir     = "/data"
	counterFile = "/data/counter"
	marker      = "URLDISK-GUEST"
)

var console = os.Stdout

func say(format string, args ...any) {
	fmt.Fprintf(console, marker+" "+format+"\n", args...)
}

func main() {
	setup()
	params := cmdline()
	mode := params["urldisk.mode"]
	if mode == "" {
		mode = "once"
	}
	interval := time.Second
	if s := params["urldisk.interval"]; s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			fail(fmt.Errorf("urldisk.interval=%q: want a positive Go duration like 500ms", s))
		}
		interval = d
	}
	say("boot mode=%s", mode)
	switch mode {
	case "once":
		n, err := increment()
		if err != nil {
			fail(err)
		}
		say("counter=%d", n)
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			fail(fmt.Errorf("remount / read-only: %w", err))
		}
		say("poweroff")
		poweroff()
	case "loop":
		for {
			n, err := increment()
			if err != nil {
				fail(err)
			}
			say("counter=%d", n)
			time.Sleep(interval)
		}
	default:
		fail(fmt.Errorf("urldisk.mode=%q: want once or loop", mode))
	}
}

// setup mounts /proc (for the command line) and /dev (for the console when
// the kernel did not hand PID 1 one). Errors are ignored: the root is
// mounted already, and a missing mount shows up as a later error.
func setup() {
	_ = os.MkdirAll("/proc", 0o755)
	_ = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	_ = os.MkdirAll("/dev", 0o755)
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return
	}
	if _, err := unix.Write(1, nil); err != nil {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			console = f
		}
	}
}

// cmdline returns the key=value words of /proc/cmdline.
func cmdline() map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return out
	}
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok {
			out[k] = v
		}
	}
	return out
}

// increment reads the counter, adds one and makes the new value durable.
func increment() (int, error) {
	n := 0
	b, err := os.ReadFile(counterFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return 0, err
	default:
		if n, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return 0, fmt.Errorf("%s holds %q: %w", counterFile, b, err)
		}
	}
	n++
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return 0, err
	}
	tmp := filepath.Join(dataDir, ".counter.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	_, err = f.WriteString(strconv.Itoa(n) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, counterFile); err != nil {
		return 0, err
	}
	d, err := os.Open(dataDir)
	if err != nil {
		return 0, err
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return 0, fmt.Errorf("fsync %s: %w", dataDir, err)
	}
	unix.Sync()
	return n, nil
}

func fail(err error) {
	say("error: %v", err)
	unix.Sync()
	poweroff()
}

func poweroff() {
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Returning from PID 1 panics the kernel, which at least stops the VM
	// (panic=-1 with qemu -no-reboot).
	say("error: power off: %v", err)
	os.Exit(1)
}
