package cache

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// crashDirEnv tells a re-executed test binary to act as the crashing process
// of TestStaleIndexAfterCrash, using the named cache directory.
const crashDirEnv = "URLDISK_CACHE_CRASH_DIR"

// Keys of the crash scenario: the child fills 8 slots with stale[] and
// kept[], persists the index, reads kept[] (setting their reference bits),
// then puts fresh[], which CLOCK places in stale[]'s slots. Then it dies.
func crashKeys() (stale, kept, fresh []Key) {
	for i := range 4 {
		stale = append(stale, key("vol-s", uint64(i), 0))
		kept = append(kept, key("vol-k", uint64(i), 1))
		fresh = append(fresh, key("vol-f", uint64(i), 2))
	}
	return stale, kept, fresh
}

// TestStaleIndexAfterCrash shows that an index persisted before a crash is
// safe even though slots it lists were reused afterwards: reading a stale
// entry fails the checksum and is a miss, never the new occupant's bytes.
func TestStaleIndexAfterCrash(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStaleIndexAfterCrash$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v\n%s", err, out)
	}
	stale, kept, fresh := crashKeys()

	// The persisted index is stale: it still maps stale[i] to the slot that
	// now holds fresh[i]'s bytes.
	b, err := os.ReadFile(indexPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	_, entries, err := decodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	slab, err := os.ReadFile(slabPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	staleSlot := map[Key]uint32{}
	for _, e := range entries {
		staleSlot[e.key] = e.slot
	}
	if len(entries) != 8 {
		t.Fatalf("index has %d entries; want 8", len(entries))
	}
	for i, k := range stale {
		si, ok := staleSlot[k]
		if !ok {
			t.Fatalf("index does not list %v", k)
		}
		inSlot := slab[int(si)*ChunkSize : int(si)*ChunkSize+ChunkSize]
		if !bytes.Equal(inSlot, chunkData(fresh[i], ChunkSize)) {
			t.Fatalf("slot %d listed for %v does not hold %v's bytes; the scenario did not reuse it", si, k, fresh[i])
		}
	}

	// Opening succeeds (the dead child's flock is gone) and loads the index.
	c := openTest(t, dir, 8, Options{})
	if st := c.Stats(); st.Entries != 8 {
		t.Fatalf("stats %+v; want the 8 indexed entries loaded", st)
	}
	for _, k := range kept {
		wantHit(t, c, k, chunkData(k, ChunkSize), 0, ChunkSize)
	}
	for _, k := range stale {
		wantMiss(t, c, k, SubBlockSize, SubBlockSize) // a 4 KiB read: one sub-block verified
		wantMiss(t, c, k, 0, ChunkSize)               // and the entry is gone
	}
	for _, k := range fresh {
		wantMiss(t, c, k, 0, ChunkSize) // written after the index: unknown
	}
	st := c.Stats()
	if st.Corrupt != uint64(len(stale)) || st.Entries != len(kept) {
		t.Fatalf("stats %+v; want %d corrupt, %d entries", st, len(stale), len(kept))
	}
	for _, k := range fresh {
		wantHit(t, c, k, mustPut(t, c, k, ChunkSize), 0, ChunkSize)
	}
}

// crashChild is the crashing process: it never calls Close.
func crashChild(t *testing.T, dir string) {
	c, err := Open(dir, 8*ChunkSize, Options{IndexSyncInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	stale, kept, fresh := crashKeys()
	for _, k := range append(append([]Key{}, stale...), kept...) {
		mustPut(t, c, k, ChunkSize)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, k := range kept {
		wantHit(t, c, k, chunkData(k, ChunkSize), 0, 1)
	}
	for _, k := range fresh {
		mustPut(t, c, k, ChunkSize)
	}
	for _, k := range stale {
		wantMiss(t, c, k, 0, 1)
	}
	// Make the slab durable so the parent reads exactly what a real crash
	// after writeback would leave; the index stays as of the Sync above.
	if err := c.slab.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {} // wait for the signal
}
