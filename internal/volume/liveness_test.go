package volume

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestWriterRunning: a writer on this host is running while its process
// lives, not once it has exited or its pid belongs to a process started
// after the attach; a writer on another host is unknown.
func TestWriterRunning(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 0 || d > time.Hour {
		t.Fatalf("processStart of this test = %v (%v ago), want within the last hour", start, d)
	}
	if running, known := writerRunning(host, os.Getpid(), time.Now()); !running || !known {
		t.Errorf("this process: running %v known %v, want running", running, known)
	}
	if running, known := writerRunning(host, os.Getpid(), start.Add(-time.Hour)); running || !known {
		t.Errorf("pid reused by a process started after the attach: running %v known %v, want not running", running, known)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if running, known := writerRunning(host, cmd.Process.Pid, time.Now()); running || !known {
		t.Errorf("exited process: running %v known %v, want not running", running, known)
	}
	if _, known := writerRunning(host+"-elsewhere", os.Getpid(), time.Now()); known {
		t.Error("writer on another host: known, want unknown")
	}
}
