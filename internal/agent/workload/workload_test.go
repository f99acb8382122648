package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestVMArgs(t *testing.T) {
	got := VM{Name: "a-very-long-machine-name-indeed", Accel: "tcg", MemoryMiB: 256, CPUs: 2,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Append: "root=/dev/nvme0n1 console=ttyS0",
		Drive: "nbd+unix:///vm?socket=/run/a,b.sock", NVMeSerial: "a-very-long-machine-name-indeed",
		ConsoleLog: "/d/console.log", QMPSocket: "/s/m.qmp", Extra: []string{"-no-reboot"}}.Args()
	want := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-name", "a-very-long-machine-name-indeed",
		"-accel", "tcg",
		"-m", "256", "-smp", "2",
		"-kernel", "/k/vmlinuz",
		"-initrd", "/k/initrd",
		"-append", "root=/dev/nvme0n1 console=ttyS0",
		"-drive", "file=nbd+unix:///vm?socket=/run/a,,b.sock,format=raw,if=none,id=d0,cache=none",
		"-device", "nvme,drive=d0,serial=a-very-long-machine-",
		"-chardev", "file,id=serial0,path=/d/console.log,append=on",
		"-serial", "chardev:serial0",
		"-qmp", "unix:/s/m.qmp,server=on,wait=off",
		"-no-reboot",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("VM.Args:\n got %q\nwant %q", got, want)
	}
	// Defaults, and kvm adds -cpu host.
	got = VM{Name: "m", Accel: "kvm", Kernel: "/k", Drive: "nbd+unix:///v?socket=/s", NVMeSerial: "m", ConsoleLog: "/c", QMPSocket: "/q"}.Args()
	joined := strings.Join(got, " ")
	for _, w := range []string{"-m 512", "-smp 1", "-accel kvm", "-cpu host", "serial=m"} {
		if !strings.Contains(joined, w) {
			t.Errorf("default args %q lack %q", joined, w)
		}
	}
	if strings.Contains(joined, "-initrd") || strings.Contains(joined, "-append") {
		t.Errorf("empty initrd/append passed: %q", joined)
	}
	if a := Accel(); a != "kvm" && a != "tcg" {
		t.Fatalf("Accel = %q", a)
	}
}

// fakeQMP serves the QMP protocol on a unix socket like qemu does and
// records the commands it gets. Replies are scripted per command.
type fakeQMP struct {
	path string
	ln   net.Listener
	wg   sync.WaitGroup

	mu       sync.Mutex
	commands []string
}

func startFakeQMP(t *testing.T, reply func(cmd string, w *json.Encoder) bool) *fakeQMP {
	t.Helper()
	f := &fakeQMP{path: filepath.Join(t.TempDir(), "q.sock")}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				enc := json.NewEncoder(c)
				enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{"oob"}}})
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var m struct {
						Execute string `json:"execute"`
					}
					if json.Unmarshal(sc.Bytes(), &m) != nil {
						return
					}
					f.mu.Lock()
					f.commands = append(f.commands, m.Execute)
					f.mu.Unlock()
					if !reply(m.Execute, enc) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeQMP) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.commands...)
}

func TestQMP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := startFakeQMP(t, func(cmd string, w *json.Encoder) bool {
		switch cmd {
		case "qmp_capabilities":
			w.Encode(map[string]any{"return": map[string]any{}})
		case "system_powerdown":
			// An event arrives before the answer: it must be skipped.
			w.Encode(map[string]any{"event": "POWERDOWN", "timestamp": map[string]int{"seconds": 1}})
			w.Encode(map[string]any{"return": map[string]any{}})
		case "quit":
			return false // qemu exits without answering
		default:
			w.Encode(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command " + cmd + " has not been found"}})
		}
		return true
	})
	q, err := DialQMP(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "system_powerdown"); err != nil {
		t.Fatalf("system_powerdown: %v", err)
	}
	if err := q.Execute(ctx, "bogus"); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("bogus command: %v", err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Fatalf("quit answered by a closed connection: %v", err)
	}
	if got, want := f.got(), []string{"qmp_capabilities", "system_powerdown", "bogus", "quit"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
}

func TestQMPTimeoutAndBadGreeting(t *testing.T) {
	// A server that never answers: Execute honours the context.
	f := startFakeQMP(t, func(cmd string, w *json.Encoder) bool {
		if cmd == "qmp_capabilities" {
			w.Encode(map[string]any{"return": map[string]any{}})
		}
		return true
	})
	q, err := DialQMP(context.Background(), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := q.Execute(ctx, "system_powerdown"); err == nil {
		t.Fatal("Execute without an answer returned nil")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Execute ignored its context for %v", d)
	}

	// Not a QMP server.
	path := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte(`{"hello": 1}` + "\n"))
			c.Close()
		}
	}()
	if _, err := DialQMP(context.Background(), path); err == nil || !strings.Contains(err.Error(), "QMP banner") {
		t.Fatalf("DialQMP to a non-QMP server: %v", err)
	}
}

func startShell(t *testing.T, script string, env ...string) Machine {
	t.Helper()
	dir := t.TempDir()
	m, err := Start(Spec{Kind: KindProcess, Args: []string{"/bin/sh", "-c", script}, Env: env},
		Config{Name: "m1", Host: "h1", NBDURI: "nbd+unix:///v?socket=/x", Dir: dir, SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background(), 0) })
	return m
}

func TestProcessEnvAndExit(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
	t.Setenv("URLDISK_TOKEN", "do-not-leak-either")
	dir := t.TempDir()
	m, err := Start(Spec{Kind: KindProcess, Args: []string{"/bin/sh", "-c", "env; exit 3"}, Env: []string{"EXTRA=1"}},
		Config{Name: "m1", Host: "h1", NBDURI: "nbd+unix:///v?socket=/x", Dir: dir, SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if c := m.ExitCode(); c != 3 {
		t.Fatalf("exit code %d, want 3", c)
	}
	out, err := os.ReadFile(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	env := string(out)
	for _, want := range []string{"URLDISK_NBD_URI=nbd+unix:///v?socket=/x\n", "URLDISK_MACHINE=m1\n", "URLDISK_HOST=h1\n", "EXTRA=1\n", "PATH="} {
		if !strings.Contains(env, want) {
			t.Errorf("environment lacks %q:\n%s", want, env)
		}
	}
	if strings.Contains(env, "do-not-leak") {
		t.Errorf("the agent's secrets leaked into the machine's environment:\n%s", env)
	}
	if err := m.Stop(context.Background(), time.Second); err != nil {
		t.Fatalf("Stop of an exited process: %v", err)
	}
}

func TestProcessStop(t *testing.T) {
	// Exits on SIGTERM.
	m := startShell(t, "sleep 100 & wait")
	start := time.Now()
	if err := m.Stop(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("graceful stop took %v", d)
	}
	if c := m.ExitCode(); c != -1 {
		t.Fatalf("exit code %d, want -1 (signalled)", c)
	}
	// Ignores SIGTERM (and so does its child): killed after the grace time,
	// the whole process group with it.
	m = startShell(t, `trap "" TERM; sh -c 'trap "" TERM; echo $$ > child.pid; sleep 100' & wait`)
	time.Sleep(300 * time.Millisecond) // let it install the traps
	start = time.Now()
	if err := m.Stop(context.Background(), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("stop took %v: did not wait for the grace time", d)
	}
	// Stop with a cancelled context kills at once.
	m = startShell(t, `trap "" TERM; sleep 100`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Stop(ctx, time.Hour); err == nil {
		t.Fatal("Stop with a cancelled context returned nil")
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("process still running after Stop returned")
	}
	if err := syscall.Kill(m.PID(), 0); err == nil {
		t.Fatal("process still exists after Stop")
	}
}

func TestCheck(t *testing.T) {
	if err := Check(Spec{Kind: KindProcess, Args: []string{"/nonexistent/cmd"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent/cmd") {
		t.Fatalf("Check of a missing command: %v", err)
	}
	if err := Check(Spec{Kind: KindProcess, Args: []string{"sh"}}); err != nil {
		t.Fatal(err)
	}
	if err := Check(Spec{Kind: KindQemu, Qemu: &QemuSpec{Kernel: "/nonexistent/vmlinuz"}}); err == nil || !strings.Contains(err.Error(), "vmlinuz") {
		t.Fatalf("Check of a missing kernel: %v", err)
	}
}

// The test helper's VMs (testutil/vmimage) use the same builder: console on
// stdout, no QMP, a qcow2 image, -no-reboot.
func TestVMArgsForAnImage(t *testing.T) {
	got := strings.Join(VM{Accel: "tcg", Kernel: "/k", Append: "init=/init", Drive: "/img/a.qcow2", DriveFormat: "qcow2", NVMeSerial: "urldisk", NoReboot: true}.Args(), " ")
	for _, w := range []string{"-serial stdio", "-no-reboot", "file=/img/a.qcow2,format=qcow2,", "serial=urldisk", "-append init=/init"} {
		if !strings.Contains(got, w) {
			t.Errorf("args %q lack %q", got, w)
		}
	}
	for _, w := range []string{"-name", "-qmp", "-chardev", "-cpu host"} {
		if strings.Contains(got, w) {
			t.Errorf("args %q have %q", got, w)
		}
	}
	if (Accel() == "kvm") != KVMUsable() {
		t.Errorf("Accel() = %q but KVMUsable() = %v", Accel(), KVMUsable())
	}
}

func TestStartRefusesBadSpecs(t *testing.T) {
	dir := t.TempDir()
	for _, s := range []Spec{
		{Kind: "lxc", Args: []string{"/bin/true"}},
		{Kind: KindProcess},
		{Kind: KindQemu},
	} {
		if _, err := Start(s, Config{Name: "m", Dir: dir}); !errors.Is(err, ErrInvalid) {
			t.Errorf("Start(%+v): %v, want ErrInvalid", s, err)
		}
		if err := Check(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("Check(%+v): %v, want ErrInvalid", s, err)
		}
	}
}
