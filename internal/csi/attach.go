package csi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// staged is what a node did to stage one volume, kept in its state file
// so that a restarted driver can undo it. Fields are set as each step
// succeeds; zero means the step was not done.
type staged struct {
	VolumeID string `json:"volume_id"`
	Staging  string `json:"staging"`
	ReadOnly bool   `json:"read_only"`
	Block    bool   `json:"block"`
	FsType   string `json:"fs_type,omitempty"`
	Serve    proc   `json:"serve"`
	Fuse     proc   `json:"fuse"`
	Loop     string `json:"loop,omitempty"`    // /dev/loopN
	Mounted  bool   `json:"mounted,omitempty"` // the filesystem at Staging
}

// proc names a process that may outlive the driver: its pid and its start
// time (so a reused pid is never signalled).
type proc struct {
	PID   int    `json:"pid,omitempty"`
	Start string `json:"start,omitempty"` // /proc/PID/stat field 22
}

// volDir is the node's directory for a volume: state file, sockets, logs.
// Its name is short because unix socket paths (serve's control socket is
// three levels below) must fit in 108 bytes.
func (d *Driver) volDir(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(d.cfg.StateDir, "vols", hex.EncodeToString(sum[:8]))
}

func stateFile(dir string) string { return filepath.Join(dir, "state.json") }

// loadState reads a volume's state; nil, nil when it has none.
func loadState(dir string) (*staged, error) {
	b, err := os.ReadFile(stateFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read stage state: %w", err)
	}
	var s staged
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read stage state %s: %w", stateFile(dir), err)
	}
	return &s, nil
}

// saveState writes the state file atomically (tmp, fsync, rename, fsync
// dir): a crash leaves the old state or the new, never half of one.
func saveState(dir string, s *staged) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := stateFile(dir) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write stage state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, stateFile(dir))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write stage state: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// startTime is field 22 of /proc/PID/stat; "" if the process is gone or a
// zombie.
func startTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces; fields after it follow
	// the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return ""
	}
	return f[19]
}

// alive reports whether p is still the process that was started.
func (p proc) alive() bool { return p.PID > 0 && startTime(p.PID) == p.Start }

// startDetached starts argv in its own session, so it outlives this
// driver's process (a restarted driver finds it by its state file), with
// output appended to logPath. A goroutine reaps it if it exits while we
// run.
func startDetached(argv, env []string, logPath string) (proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return proc{}, fmt.Errorf("open %s: %w", logPath, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return proc{}, fmt.Errorf("start %s: %w", filepath.Base(argv[0]), err)
	}
	go cmd.Wait()
	p := proc{PID: cmd.Process.Pid}
	for i := 0; i < 100 && p.Start == ""; i++ {
		if p.Start = startTime(p.PID); p.Start == "" {
			time.Sleep(time.Millisecond)
		}
	}
	return p, nil
}

// waitFor polls ready every 20 ms until it returns true, p exits (the
// log's tail is in the error) or ctx is done.
func waitFor(ctx context.Context, what string, p proc, logPath string, ready func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !ready() {
		if !p.alive() {
			return fmt.Errorf("%s exited: %s", what, logTail(logPath))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// logTail is the last lines of a child's log, for errors.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.ReplaceAll(string(b), "\n", " | ")
}

// stop ends p: SIGTERM, then SIGKILL after grace. It returns whether p had
// to be killed.
func (p proc) stop(ctx context.Context, grace time.Duration) bool {
	if !p.alive() {
		return false
	}
	syscall.Kill(p.PID, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for p.alive() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			syscall.Kill(p.PID, syscall.SIGKILL)
			for i := 0; i < 500 && p.alive(); i++ {
				time.Sleep(10 * time.Millisecond)
			}
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// run runs a tool and returns its trimmed output; the error names the
// command and carries its output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// isMountPoint reports whether path is a mount point (in
// /proc/self/mountinfo, which sees bind mounts of files too).
func isMountPoint(path string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	path = filepath.Clean(path)
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == path {
			return true, nil
		}
	}
	return false, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmount unmounts path if it is a mount point.
func unmount(ctx context.Context, path string) error {
	m, err := isMountPoint(path)
	if err != nil || !m {
		return err
	}
	_, err = run(ctx, "umount", path)
	return err
}
