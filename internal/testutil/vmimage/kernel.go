// Package vmimage is test support for booting real Linux VMs whose root
// filesystem is a urldisk volume:
//
//   - Kernel: a Debian cloud kernel (linux-image-cloud-amd64), fetched with
//     apt-get download and unpacked with dpkg-deb, never installed; cached
//     across runs.
//   - BuildGuestInit and BuildRootFS: a small ext4 image whose /init is the
//     static Go program in ./guestinit (a durable counter in /data/counter;
//     see that package for its once and loop modes).
//   - VM and BootVM: qemu-system-x86_64 with the volume as an NVMe disk over
//     NBD, the serial console to a file, no initramfs (the cloud kernel has
//     NVMe and ext4 built in).
//
// Tools it needs (scripts/install-test-deps.sh installs them): apt-get and
// dpkg-deb (apt, dpkg), mkfs.ext4 (e2fsprogs), qemu-system-x86_64
// (qemu-system-x86), and go. A missing tool fails the test, naming the
// package; nothing skips.
package vmimage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// KernelMetapackage is the Debian package whose current kernel Kernel
// fetches.
const KernelMetapackage = "linux-image-cloud-amd64"

// KernelEnv names an environment variable that, when set, is the path of a
// kernel image Kernel returns instead of fetching one.
const KernelEnv = "URLDISK_TEST_KERNEL"

// need fails t unless the command is on PATH, naming the Debian package
// that brings it.
func need(t testing.TB, cmd, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(cmd)
	if err != nil {
		t.Fatalf("vmimage: %s not found (install the Debian package %s, or run scripts/install-test-deps.sh): %v", cmd, pkg, err)
	}
	return p
}

// Kernel returns the path of a vmlinuz from the Debian package that
// linux-image-cloud-amd64 depends on (e.g. linux-image-6.1.0-56-cloud-amd64).
// The package is fetched with `apt-get download` and unpacked with
// `dpkg-deb -x`, not installed; only the vmlinuz is kept, in
// os.UserCacheDir()/urldisk-test/kernel/PACKAGE/vmlinuz, and reused by later
// runs. Concurrent callers (tests in several processes) serialise on a lock
// file there, and the kernel appears by an atomic rename. $URLDISK_TEST_KERNEL
// overrides all of it. Any failure is fatal, with the reason.
func Kernel(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(KernelEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("vmimage: $%s: %v", KernelEnv, err)
		}
		return p
	}
	need(t, "apt-cache", "apt")
	need(t, "apt-get", "apt")
	need(t, "dpkg-deb", "dpkg")

	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	root := filepath.Join(base, "urldisk-test", "kernel")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatalf("vmimage: kernel cache: %v", err)
	}

	pkg, err := kernelPackage(false)
	if err != nil {
		// The package lists may be missing or stale on a fresh machine.
		if out, uerr := exec.Command("apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			t.Fatalf("vmimage: cannot resolve %s (%v), and apt-get update failed: %v\n%s", KernelMetapackage, err, uerr, out)
		}
		if pkg, err = kernelPackage(true); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
	}
	final := filepath.Join(root, pkg, "vmlinuz")
	if _, err := os.Stat(final); err == nil {
		return final
	}

	lock, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("vmimage: kernel cache lock: %v", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatalf("vmimage: kernel cache lock: %v", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := os.Stat(final); err == nil {
		return final // another process fetched it while we waited
	}

	work, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		t.Fatalf("vmimage: %v", err)
	}
	defer os.RemoveAll(work)
	if err := fetchKernel(work, pkg); err != nil {
		// A stale package list names a file the mirror no longer has:
		// refresh, resolve again and try once more.
		if out, uerr := exec.Command("apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			t.Fatalf("vmimage: %v; apt-get update failed too: %v\n%s", err, uerr, out)
		}
		if pkg, err = kernelPackage(true); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
		final = filepath.Join(root, pkg, "vmlinuz")
		if _, err := os.Stat(final); err == nil {
			return final
		}
		if err := os.RemoveAll(work); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
		if err := fetchKernel(work, pkg); err != nil {
			t.Fatalf("vmimage: %v", err)
		}
	}
	// work/out holds vmlinuz; it becomes root/PKG by one atomic rename.
	if err := os.Rename(filepath.Join(work, "out"), filepath.Join(root, pkg)); err != nil {
		t.Fatalf("vmimage: %v", err)
	}
	t.Logf("vmimage: fetched %s into %s", pkg, final)
	return final
}

var kernelDep = regexp.MustCompile(`(?m)^\s*\|?Depends:\s*(linux-image-[0-9][^\s<>|]*)\s*$`)

// kernelPackage resolves the metapackage to the versioned kernel package.
func kernelPackage(afterUpdate bool) (string, error) {
	out, err := exec.Command("apt-cache", "depends", KernelMetapackage).CombinedOutput()
	hint := " (is the Debian main component in apt's sources?)"
	if !afterUpdate {
		hint = ""
	}
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %v%s\n%s", KernelMetapackage, err, hint, out)
	}
	m := kernelDep.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("apt-cache depends %s names no linux-image-N... package%s:\n%s", KernelMetapackage, hint, out)
	}
	return string(m[1]), nil
}

// fetchKernel downloads pkg into work, unpacks it and leaves its kernel at
// work/out/vmlinuz.
func fetchKernel(work, pkg string) error {
	dl := exec.Command("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg)
	dl.Dir = work
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(work, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files in %s, want 1", pkg, len(debs), work)
	}
	x := filepath.Join(work, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	kernels, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("%s holds %d boot/vmlinuz-* files, want 1", filepath.Base(debs[0]), len(kernels))
	}
	if err := os.MkdirAll(filepath.Join(work, "out"), 0o755); err != nil {
		return err
	}
	if err := os.Rename(kernels[0], filepath.Join(work, "out", "vmlinuz")); err != nil {
		return err
	}
	// Keep the exact version next to it for humans.
	note := fmt.Sprintf("%s\n%s\n", filepath.Base(debs[0]), strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-"))
	return os.WriteFile(filepath.Join(work, "out", "SOURCE"), []byte(note), 0o644)
}
