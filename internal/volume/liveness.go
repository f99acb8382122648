package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's start time: 100
// on every Linux architecture Go supports (the kernel fixes it for
// userspace), so no sysconf (cgo) is needed.
const clockTicks = 100

// writerRunning reports whether the process that fenced the volume as
// host/pid at attached still runs. known is false when this host cannot
// tell: the writer is on another host, or /proc is unreadable. A pid that
// now belongs to a process started after attached was reused: the writer
// is gone. Info uses it so that a volume whose writer closed (an import, a
// stopped serve) is not shown as held.
func writerRunning(host string, pid int, attached time.Time) (running, known bool) {
	me, err := os.Hostname()
	if err != nil || host == "" || host != me || pid <= 0 {
		return false, false
	}
	start, err := processStart(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return false, true
	}
	if err != nil {
		return false, false
	}
	// Start times have tick (10 ms) resolution and the attach time is
	// taken after the process started; a second of slack absorbs both.
	if !attached.IsZero() && start.After(attached.Add(time.Second)) {
		return false, true
	}
	return true, true
}

// processStart returns when process pid started, from /proc.
func processStart(pid int) (time.Time, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return time.Time{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start behind the last ')'. Start time is field 22.
	i := strings.LastIndexByte(string(stat), ')')
	fields := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(fields) < 20 {
		return time.Time{}, fmt.Errorf("parse /proc/%d/stat: too few fields", pid)
	}
	ticks, err := strconv.ParseInt(fields[19], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	boot, err := bootTime()
	if err != nil {
		return time.Time{}, err
	}
	return boot.Add(time.Duration(ticks) * time.Second / clockTicks), nil
}

// bootTime reads the btime line of /proc/stat.
func bootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("read boot time: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("parse boot time %q: %w", v, err)
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, errors.New("read boot time: no btime in /proc/stat")
}
