package cache

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// mountSmallTmpfs mounts a tmpfs of size bytes (a real filesystem that runs
// out of space) on a new directory and unmounts it at cleanup. The tests run
// as root, as the e2e tests that mount ext4 do.
func mountSmallTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s tmpfs on %s (these tests need root): %v\n%s", size, dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// TestFullDiskWarnsOnceAndLeavesNoTmp fills a real 1 MiB filesystem under a
// 4 MiB cache: the failing Put must be reported (one WARN naming the
// directory and the error, however many Puts fail), must not make anything
// readable, and persisting the index on the full disk must fail cleanly,
// leaving no index.tmp behind.
func TestFullDiskWarnsOnceAndLeavesNoTmp(t *testing.T) {
	dir := filepath.Join(mountSmallTmpfs(t, "1M"), "cache")
	var logs lockedbuf.Buffer
	c, err := Open(dir, 64*ChunkSize, Options{
		IndexSyncInterval: -1,
		Logger:            slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}

	var stored []Key
	var putErrs int
	for i := range 40 {
		k := key("vol", 1, uint32(i))
		err := c.Put(k, chunkData(k, ChunkSize))
		if err == nil {
			stored = append(stored, k)
			continue
		}
		putErrs++
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Put %v: %v, want an error wrapping ENOSPC", k, err)
		}
		if hit, rerr := c.ReadAt(k, make([]byte, 512), 0); hit || rerr != nil {
			t.Fatalf("ReadAt of the chunk whose Put failed: hit=%v err=%v, want a plain miss", hit, rerr)
		}
	}
	if putErrs < 10 || len(stored) == 0 {
		t.Fatalf("%d Puts stored and %d failed on a 1 MiB filesystem; want some of each", len(stored), putErrs)
	}
	for _, k := range stored {
		p := make([]byte, ChunkSize)
		if hit, err := c.ReadAt(k, p, 0); !hit || err != nil || string(p) != string(chunkData(k, ChunkSize)) {
			t.Fatalf("ReadAt %v stored before the disk filled: hit=%v err=%v", k, hit, err)
		}
	}
	if st := c.Stats(); st.WriteErrors != uint64(putErrs) {
		t.Errorf("Stats().WriteErrors = %d, want %d", st.WriteErrors, putErrs)
	}

	serr := c.Sync()
	if !errors.Is(serr, syscall.ENOSPC) {
		t.Errorf("Sync on a full disk: %v, want an error wrapping ENOSPC", serr)
	}
	for _, name := range []string{indexFileName + ".tmp", indexFileName} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a failed Sync: stat err = %v, want not exist", name, err)
		}
	}
	checkInvariants(t, c)
	if err := c.Close(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Close on a full disk: %v, want an error wrapping ENOSPC", err)
	}

	var warns []string
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") {
			warns = append(warns, line)
		}
	}
	if len(warns) != 1 {
		t.Fatalf("%d WARN lines for %d failed Puts, a failed Sync and a failed Close, want exactly 1 (rate-limited):\n%s",
			len(warns), putErrs, strings.Join(warns, "\n"))
	}
	if w := warns[0]; !strings.Contains(w, "dir="+dir) || !strings.Contains(w, "no space left on device") {
		t.Errorf("WARN does not name the cache dir %s and the error:\n%s", dir, w)
	}
}

// TestWriteWarnRepeatsAfterInterval checks the rate limit lets a later WARN
// through once WriteWarnInterval has passed, counting the failures it
// stands for.
func TestWriteWarnRepeatsAfterInterval(t *testing.T) {
	var logs lockedbuf.Buffer
	c := openTest(t, t.TempDir(), MinSlots, Options{
		IndexSyncInterval: -1,
		Logger:            slog.New(slog.NewTextHandler(&logs, nil)),
	})
	boom := errors.New("injected write failure")
	c.noteWriteError(boom)
	c.noteWriteError(boom)
	c.noteWriteError(boom)
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d WARNs for 3 failures within the interval, want 1:\n%s", n, logs.String())
	}
	// Pretend the last WARN is older than the interval.
	c.lastWriteWarn.Store(c.lastWriteWarn.Load() - int64(WriteWarnInterval))
	c.noteWriteError(boom)
	if n := strings.Count(logs.String(), "level=WARN"); n != 2 {
		t.Fatalf("%d WARNs after the interval passed, want 2:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "failures_since_last_warning=3") {
		t.Errorf("second WARN does not count the 3 failures since the first:\n%s", logs.String())
	}
}

// TestOpenUnusableDir: Open's errors about the directory itself wrap
// ErrUnusable (callers then run without a cache), a held lock still wraps
// ErrLocked only, and nonsense sizes wrap neither.
func TestOpenUnusableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ro := filepath.Join(mountSmallTmpfs(t, "1M"), "cache")
	if err := os.Mkdir(ro, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "remount,ro", filepath.Dir(ro)).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v\n%s", err, out)
	}
	for _, dir := range []string{file, filepath.Join(file, "sub"), ro} {
		_, err := Open(dir, MinSlots*ChunkSize, Options{Logger: testLogger(t)})
		if !errors.Is(err, ErrUnusable) || errors.Is(err, ErrLocked) {
			t.Errorf("Open(%s): %v, want an error wrapping ErrUnusable", dir, err)
		}
	}

	dir := t.TempDir()
	openTest(t, dir, MinSlots, Options{})
	if _, err := Open(dir, MinSlots*ChunkSize, Options{Logger: testLogger(t)}); !errors.Is(err, ErrLocked) || errors.Is(err, ErrUnusable) {
		t.Errorf("second Open: %v, want ErrLocked and not ErrUnusable", err)
	}
	if _, err := Open(t.TempDir(), 1, Options{}); err == nil || errors.Is(err, ErrUnusable) {
		t.Errorf("Open with 1 byte: %v, want a size error not wrapping ErrUnusable", err)
	}
}

// TestSlabReservedAheadOfFills: the slab's disk blocks are allocated one
// reserveStep ahead of the chunks filled, not for the whole capacity up
// front (a 1 GiB cache on a 100 MiB filesystem); a reservation the disk
// cannot make ends the reservations without failing a Put, and chunks are
// then written into holes as before, readable.
func TestSlabReservedAheadOfFills(t *testing.T) {
	dir := filepath.Join(mountSmallTmpfs(t, "100M"), "cache")
	c, err := Open(dir, 1<<30, Options{IndexSyncInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	allocated := func() int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, slabFileName), &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	put := func(from, to int) {
		for i := from; i < to; i++ {
			k := key("vol", 1, uint32(i))
			if err := c.Put(k, chunkData(k, ChunkSize)); err != nil {
				t.Fatalf("Put chunk %d: %v", i, err)
			}
		}
	}
	put(0, 10)
	if got := allocated(); got < reserveStep || got > reserveStep+(1<<20) {
		t.Fatalf("after 10 chunks the slab has %d bytes allocated, want one reservation of %d", got, reserveStep)
	}
	// Chunk 1024 needs the next step, which does not fit in what is left.
	const n = 1100
	put(10, n)
	if got, want := allocated(), int64(n*ChunkSize); got < want || got > want+(1<<20) {
		t.Fatalf("after %d chunks (%d bytes) the slab has %d bytes allocated", n, want, got)
	}
	p := make([]byte, ChunkSize)
	for _, i := range []int{0, 1023, 1024, n - 1} {
		k := key("vol", 1, uint32(i))
		if hit, err := c.ReadAt(k, p, 0); !hit || err != nil || string(p) != string(chunkData(k, ChunkSize)) {
			t.Fatalf("ReadAt chunk %d: hit=%v err=%v", i, hit, err)
		}
	}
}
