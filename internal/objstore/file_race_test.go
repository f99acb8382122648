package objstore

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The multi-process race: the test binary re-executes itself as child
// processes (selected by raceChildEnv) that race the parent's goroutines to
// PutIfAbsent the same keys with different content.
const (
	raceChildEnv = "URLDISK_OBJSTORE_RACE_CHILD" // test name to run as a child
	raceDirEnv   = "URLDISK_OBJSTORE_RACE_DIR"
	raceIDEnv    = "URLDISK_OBJSTORE_RACE_ID"

	raceProcs      = 4  // child processes, plus the parent
	raceGoroutines = 8  // per process
	raceKeys       = 30 // keys raced for, one after another
)

// raceContent is what racer (proc, g) writes to key k: distinct per racer,
// with a racer-dependent length so mixed or torn writes would show.
func raceContent(proc, g, k int) []byte {
	head := fmt.Sprintf("proc %d goroutine %d key %d|", proc, g, k)
	return append([]byte(head), bytes.Repeat([]byte{byte('a' + g)}, 1000+proc*4096+g*77)...)
}

func raceKey(k int) string { return fmt.Sprintf("race/%04d", k) }

// runRacers has raceGoroutines goroutines PutIfAbsent every key once and
// writes "WIN k proc g" for each creation to out. Any error other than
// ErrExists is returned.
func runRacers(s Store, proc int, out io.Writer) error {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for g := range raceGoroutines {
		wg.Go(func() {
			for k := range raceKeys {
				err := s.PutIfAbsent(bgCtx, raceKey(k), raceContent(proc, g, k))
				mu.Lock()
				switch {
				case err == nil:
					fmt.Fprintf(out, "WIN %d %d %d\n", k, proc, g)
				case !isExists(err):
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d unexpected errors, first: %w", len(errs), errs[0])
	}
	return nil
}

// raceChild is the child process's side: open the store, say READY, wait
// for a line on stdin, race, report.
func raceChild(t *testing.T, open func(dir string) (Store, error)) {
	proc, err := strconv.Atoi(os.Getenv(raceIDEnv))
	if err != nil {
		t.Fatalf("bad %s: %v", raceIDEnv, err)
	}
	s, err := open(os.Getenv(raceDirEnv))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fmt.Println("READY")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for start: %v", err)
	}
	var out bytes.Buffer
	if err := runRacers(s, proc, &out); err != nil {
		t.Fatal(err)
	}
	fmt.Print(out.String())
	fmt.Println("DONE")
}

// raceProcesses runs the race for the test named name over stores made by
// open and returns the winners' reports, one "WIN k proc g" line each.
func raceProcesses(t *testing.T, name, dir string, open func(dir string) (Store, error)) []string {
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		lines *bufio.Scanner
	}
	var children []child
	for i := 1; i <= raceProcs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v=false")
		cmd.Env = append(os.Environ(), raceChildEnv+"="+name, raceDirEnv+"="+dir, raceIDEnv+"="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		children = append(children, child{cmd, stdin, bufio.NewScanner(stdout)})
	}
	// Barrier: every child has opened the store and waits on stdin.
	for i, c := range children {
		ready := false
		for c.lines.Scan() {
			if c.lines.Text() == "READY" {
				ready = true
				break
			}
		}
		if !ready {
			t.Fatalf("child %d never became ready: %v", i+1, c.lines.Err())
		}
	}
	s, err := open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, "GO\n"); err != nil {
			t.Fatal(err)
		}
	}
	var parentOut bytes.Buffer
	if err := runRacers(s, 0, &parentOut); err != nil {
		t.Fatalf("parent: %v", err)
	}
	wins := splitLines(parentOut.String())
	for i, c := range children {
		done := false
		for c.lines.Scan() {
			line := c.lines.Text()
			switch {
			case line == "DONE":
				done = true
			case strings.HasPrefix(line, "WIN "):
				wins = append(wins, line)
			}
		}
		if err := c.cmd.Wait(); err != nil || !done {
			t.Fatalf("child %d failed (done %v): %v", i+1, done, err)
		}
	}
	return wins
}

func splitLines(s string) []string {
	var out []string
	for line := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

// checkRace verifies the race's outcome: one winner per key, whose content
// the object holds.
func checkRace(t *testing.T, s Store, wins []string) {
	winners := make(map[int][]string)
	for _, w := range wins {
		var k, proc, g int
		if _, err := fmt.Sscanf(w, "WIN %d %d %d", &k, &proc, &g); err != nil {
			t.Fatalf("bad report %q: %v", w, err)
		}
		winners[k] = append(winners[k], w)
	}
	for k := range raceKeys {
		ws := winners[k]
		if len(ws) != 1 {
			t.Errorf("key %s: %d winners, want exactly 1: %v", raceKey(k), len(ws), ws)
			continue
		}
		var proc, g int
		fmt.Sscanf(ws[0], "WIN %d %d %d", &k, &proc, &g)
		got, err := s.Get(bgCtx, raceKey(k))
		if err != nil {
			t.Errorf("Get(%s): %v", raceKey(k), err)
		} else if !bytes.Equal(got, raceContent(proc, g, k)) {
			t.Errorf("key %s: content %q... is not the winner's (proc %d goroutine %d)", raceKey(k), got[:min(len(got), 40)], proc, g)
		}
	}
}

// TestFilePutIfAbsentMultiProcess races 5 processes × 8 goroutines to create
// each of 30 keys in one file:// pool: exactly one must win each key, the
// object must hold the winner's content, and no temporary file may remain.
func TestFilePutIfAbsentMultiProcess(t *testing.T) {
	open := func(dir string) (Store, error) { return openFileStore(dir) }
	if os.Getenv(raceChildEnv) == t.Name() {
		raceChild(t, open)
		return
	}
	dir := t.TempDir()
	wins := raceProcesses(t, t.Name(), dir, open)
	s, err := open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkRace(t, s, wins)

	var listed int
	if err := s.List(bgCtx, "", func(ObjectInfo) error { listed++; return nil }); err != nil {
		t.Fatal(err)
	}
	if listed != raceKeys {
		t.Errorf("List: %d objects, want %d", listed, raceKeys)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), tmpPrefix) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
