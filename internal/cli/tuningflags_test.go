package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// The agent refuses the stall bounds serve refuses, naming the flag,
// before it touches the fleet store (no heartbeat is written).
func TestAgentStallFlagsValidated(t *testing.T) {
	dir := t.TempDir()
	fleetDir := filepath.Join(dir, "fleet")
	for flag, val := range map[string]string{"--store-timeout": "-1s", "--flush-timeout": "-1s"} {
		_, err := runCLI(t, "agent", "--id", "h1", "--fleet", "file://"+fleetDir, "--cache", filepath.Join(dir, "cache"),
			"--listen", "tcp:127.0.0.1:0", flag, val)
		// "agent: FLAG", not cobra's "unknown flag: FLAG".
		if err == nil || !strings.Contains(err.Error(), "agent: "+flag) {
			t.Errorf("agent %s %s: %v, want the agent's error naming the flag", flag, val, err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(fleetDir, "*")); len(m) != 0 {
		t.Errorf("a refused agent wrote to the fleet store: %v", m)
	}
}

// Bad readahead sizes are refused, naming the flag, before attaching.
func TestServeReadaheadFlagsValidated(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	vol := "file://" + filepath.Join(t.TempDir(), "p", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "s.sock")
	for _, c := range []struct{ flag, val string }{
		{"--readahead", "-1M"}, {"--readahead-fill", "-4K"}, {"--readahead", "lots"}, {"--readahead-fill", "-1"},
	} {
		_, err := runCLI(t, "serve", "--no-cache", "--listen", sock, c.flag, c.val, vol)
		if err == nil || !strings.Contains(err.Error(), c.flag+":") {
			t.Errorf("serve %s %s: %v, want an error naming the flag", c.flag, c.val, err)
		}
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("a refused serve attached the volume read-write (epoch %d, want 0)", epoch)
	}
	// Good values reach the plan in bytes; 0 (the flags' default) leaves
	// the volume's defaults.
	o := &serveOptions{maxConns: 1, handshake: 1, storeTimeout: 1, readahead: "8M", readaheadFill: "0"}
	plan, err := planServe(o, []string{vol})
	if err != nil || plan.readahead != 8<<20 || plan.readaheadFill != 0 {
		t.Fatalf("planServe --readahead 8M --readahead-fill 0: %+v, %v; want 8 MiB and 0", plan, err)
	}
}

// --memory-limit: a bad size is refused naming the flag before attaching;
// unset it is serve's default unless GOMEMLIMIT chose one (then serve
// leaves the runtime's limit alone); 0 sets none.
func TestServeMemoryLimitFlag(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	vol := "file://" + filepath.Join(t.TempDir(), "p", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "s.sock")
	for _, val := range []string{"-1M", "lots"} {
		_, err := runCLI(t, "serve", "--no-cache", "--listen", sock, "--memory-limit", val, vol)
		if err == nil || !strings.Contains(err.Error(), "--memory-limit:") {
			t.Errorf("serve --memory-limit %s: %v, want an error naming the flag", val, err)
		}
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("a refused serve attached the volume read-write (epoch %d, want 0)", epoch)
	}
	for _, c := range []struct {
		flag, env string
		want      int64
	}{
		{"", "", defaultMemoryLimit}, {"", "300MiB", 0}, {"256M", "300MiB", 256 << 20}, {"0", "", 0},
	} {
		t.Setenv("GOMEMLIMIT", c.env)
		o := &serveOptions{maxConns: 1, handshake: 1, storeTimeout: 1, readahead: "0", readaheadFill: "0", memoryLimit: c.flag}
		plan, err := planServe(o, []string{vol})
		if err != nil || plan.memoryLimit != c.want {
			t.Errorf("planServe --memory-limit %q with GOMEMLIMIT=%q: %v, %v; want %d", c.flag, c.env, plan, err, c.want)
		}
	}
}
