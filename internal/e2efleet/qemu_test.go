package e2efleet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/vmimage"
)

// TestFleetQemuDrain: a qemu machine boots the Debian cloud kernel with its
// root filesystem on a urldisk volume (NVMe over NBD). Its init bumps a
// durable counter every 300 ms. Draining its host stops the VM (QMP
// system_powerdown, then quit after the grace time, since the test init
// ignores the power button), and it boots on the other host, where the
// counter continues from the last durable value.
func TestFleetQemuDrain(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 not found: install the Debian package qemu-system-x86 (scripts/install-test-deps.sh): %v", err)
	}
	e := newEnv(t)
	kernel := vmimage.Kernel(t)
	img := vmimage.BuildRootFS(t, t.TempDir(), vmimage.BuildGuestInit(t))
	vol := e.volumeURL("vmroot")
	e.mustCLI("import", img, vol)
	for _, h := range []string{"h1", "h2"} {
		e.startAgent(h, "--stop-grace", "3s")
	}
	kcmd := "root=/dev/nvme0n1 rootfstype=ext4 rootwait rw console=ttyS0 init=/init panic=-1 nokaslr mitigations=off urldisk.mode=loop urldisk.interval=300ms"
	e.mustCLI("machine", "run", "vm", "--volume", vol, "--runtime", "qemu", "--host", "h1",
		"--kernel", kernel, "--append", kcmd, "--memory", "512", "--wait", "60s", "--", "-no-reboot")

	console := func(host string) []byte {
		b, _ := os.ReadFile(filepath.Join(e.dir, host, "machines", "vm", "console.log"))
		return b
	}
	e.waitFor("three counters on h1", 3*time.Minute, func() bool { return len(vmimage.GuestCounters(console("h1"))) >= 3 })

	out := e.mustCLI("drain", "h1", "--wait", "3m")
	t.Logf("drain:\n%s", out)
	if !strings.Contains(out, "h1 → h2") {
		t.Fatalf("drain did not move vm to h2:\n%s", out)
	}
	downtime(t, out)
	e.waitFor("three counters on h2", 3*time.Minute, func() bool { return len(vmimage.GuestCounters(console("h2"))) >= 3 })
	e.mustCLI("machine", "stop", "vm", "--wait", "60s")

	c1, c2 := vmimage.GuestCounters(console("h1")), vmimage.GuestCounters(console("h2"))
	t.Logf("counters on h1 %v, on h2 %v", c1, c2)
	for _, c := range [][]int{c1, c2} {
		for i := 1; i < len(c); i++ {
			if c[i] != c[i-1]+1 {
				t.Fatalf("counter jumped from %d to %d within one boot: %v", c[i-1], c[i], c)
			}
		}
	}
	// The VM was cut off by QMP quit: at most one more increment may have
	// become durable on h1 without being printed.
	last, first := c1[len(c1)-1], c2[0]
	if first != last+1 && first != last+2 {
		t.Fatalf("on h2 the counter restarted at %d after %d on h1: it did not continue", first, last)
	}
	if c1[0] != 1 {
		t.Fatalf("first boot started at %d", c1[0])
	}
	if e := vmimage.GuestError(console("h2")); e != "" {
		t.Fatalf("guest error on h2: %s", e)
	}
	if log := e.agents["h1"].out.String(); !strings.Contains(log, "quitting qemu") {
		t.Fatalf("h1 did not stop qemu through QMP; its log:\n%s", log)
	}
}
