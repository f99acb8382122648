package vmimage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestGuestOnceThenLoop boots the guest from a plain image file (no
// urldisk): once mode bumps the counter to 1 and powers off cleanly; loop
// mode then continues from the stored value, 2, 3, 4, ... until stopped.
func TestGuestOnceThenLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e2fsck := need(t, "e2fsck", "e2fsprogs")
	dir := t.TempDir()
	kernel := Kernel(t)
	img := BuildRootFS(t, dir, BuildGuestInit(t))

	serial1 := filepath.Join(dir, "once.log")
	err := BootVM(ctx, t, kernel, img, serial1)
	log1, _ := os.ReadFile(serial1)
	if c := GuestCounters(log1); err != nil || !slices.Equal(c, []int{1}) || !GuestPoweredOff(log1) || GuestError(log1) != "" {
		t.Fatalf("once: qemu: %v; counters %v, want [1] and a power-off; serial log:\n%s", err, c, log1)
	}
	if out, err := exec.Command(e2fsck, "-f", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after a once boot: %v\n%s", err, out)
	}

	serial2 := filepath.Join(dir, "loop.log")
	lctx, lcancel := context.WithTimeout(ctx, DefaultBootTimeout)
	defer lcancel()
	vm := VM{Kernel: kernel, Drive: img, SerialLog: serial2, Append: []string{"urldisk.mode=loop", "urldisk.interval=200ms"}}
	cmd := vm.Command(lctx)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var log2 []byte
	for len(GuestCounters(log2)) < 3 {
		select {
		case err := <-exited:
			log2, _ = os.ReadFile(serial2)
			t.Fatalf("loop: qemu exited (%v) before printing 3 counters:\n%s\nqemu output:\n%s", err, log2, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		log2, _ = os.ReadFile(serial2)
	}
	lcancel()
	<-exited
	log2, _ = os.ReadFile(serial2)
	c := GuestCounters(log2)
	for i := range c {
		if c[i] != i+2 {
			t.Fatalf("loop: counters %v, want 2, 3, 4, ...; serial log:\n%s", c, log2)
		}
	}
	if l := GuestLines(log2); l[0] != "boot mode=loop" || GuestError(log2) != "" || GuestPoweredOff(log2) {
		t.Fatalf("loop: guest lines %q; serial log:\n%s", l, log2)
	}
}
