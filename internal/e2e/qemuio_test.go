package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// ioOp is one qemu-io write-like command and its effect on a model disk.
type ioOp struct {
	cmd     string // "write -P", "write -f -P" (FUA), "write -z", "discard"
	pattern byte
	off, n  int64
}

func (o ioOp) qemuIO() string {
	switch o.cmd {
	case "write -z", "discard":
		return fmt.Sprintf("%s %d %d", o.cmd, o.off, o.n)
	}
	return fmt.Sprintf("%s 0x%02x %d %d", o.cmd, o.pattern, o.off, o.n)
}

func (o ioOp) apply(model []byte) {
	b := o.pattern
	if o.cmd == "write -z" || o.cmd == "discard" {
		b = 0
	}
	for i := o.off; i < o.off+o.n; i++ {
		model[i] = b
	}
}

// readChecks returns qemu-io "read -P" commands that check every byte of
// [0, len(model)) that differs from zero, plus the zero bytes around and
// between them, as runs of equal bytes (at most maxRuns runs; the rest is
// left to a whole-image comparison).
func readChecks(model []byte, maxRuns int) []string {
	var cmds []string
	for off := 0; off < len(model) && len(cmds) < maxRuns; {
		end := off + 1
		for end < len(model) && model[end] == model[off] {
			end++
		}
		// Long zero runs are checked only in their first and last MiB.
		if model[off] == 0 && end-off > 2<<20 {
			cmds = append(cmds, fmt.Sprintf("read -P 0 %d %d", off, 1<<20), fmt.Sprintf("read -P 0 %d %d", end-(1<<20), 1<<20))
		} else {
			cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d %d", model[off], off, end-off))
		}
		off = end
	}
	return cmds
}

// qemuIO runs qemu-io on uri with one -c per command and fails t if it
// exits non-zero or reports a failure.
func qemuIO(t *testing.T, uri string, flags []string, cmds ...string) string {
	t.Helper()
	args := append([]string{"-f", "raw"}, flags...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	r := run(t, "qemu-io", append(args, uri)...)
	out := r.output()
	if r.code != 0 || strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io reported a failure:\n%s", r)
	}
	return out
}

// TestQemuIOPatterns writes patterns with qemu-io (aligned and unaligned,
// FUA, write-zeroes, discard, across segment boundaries, the last byte),
// reads them back in the same and in a new connection, and again after
// serve restarts with an empty cache. A whole-image copy is compared with a
// model of the expected contents each time.
func TestQemuIOPatterns(t *testing.T) {
	const size = 64 << 20
	vol := volURL(filePool(t), "pat")
	s := startServe(t, vol, "--create", "--size", "64M")

	const k, m = 1 << 10, 1 << 20
	ops := []ioOp{
		{"write -P", 0xaa, 0, 64 * k},
		{"write -P", 0x11, 2*m + 1000, 3000}, // unaligned, inside one block
		{"write -P", 0x12, 2*m + 8190, 5},    // straddles a block boundary
		{"write -P", 0x22, 64 * k, 128 * k},
		{"discard", 0, 64 * k, 64 * k},
		{"write -P", 0x33, 1 * m, 1 * m},
		{"write -z", 0, 1*m + 1424, 5000}, // unaligned zeroes inside data
		{"write -f -P", 0x44, 4 * m, 4 * k},
		{"write -P", 0x66, 8*m - 123, 5*m + 7}, // larger than a 4 MiB segment
		{"write -P", 0x77, 9 * m, 10},          // overwrites part of the above
		{"write -P", 0x55, size - 1, 1},        // the last byte
		{"write -P", 0x88, 20 * m, 32 << 20},   // the largest request (32 MiB)
		{"write -z", 0, 30 * m, 1 * m},         // zeroes inside it
		{"discard", 0, 40*m + 4*k, 8 * k},      // and a discard
	}
	model := make([]byte, size)
	var writes []string
	for _, o := range ops {
		writes = append(writes, o.qemuIO())
		o.apply(model)
	}
	checks := readChecks(model, 200)
	// The explicit cases from the first connection's point of view.
	explicit := []string{
		"read -P 0xaa 0 64k",
		"read -P 0 2097152 1000",
		fmt.Sprintf("read -P 0x11 %d 3000", 2*m+1000),
		fmt.Sprintf("read -P 0 %d %d", 2*m+4000, 4190),
		fmt.Sprintf("read -P 0x12 %d 5", 2*m+8190),
		"read -P 0 64k 64k",
		"read -P 0x22 128k 64k",
		fmt.Sprintf("read -P 0 %d 5000", 1*m+1424),
		fmt.Sprintf("read -P 0x55 %d 1", size-1),
	}
	// -d unmap: qemu ignores discard requests otherwise.
	qemuIO(t, s.URI("pat"), []string{"-d", "unmap"}, append(append(append(writes, explicit...), "flush"), checks...)...)

	verify := func(uri, when string) {
		t.Helper()
		// A new connection, read-only.
		qemuIO(t, uri, []string{"-r"}, append(explicit, checks...)...)
		got, err := os.ReadFile(copyOut(t, uri))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("%s: the volume differs from the model at byte %d", when, firstDiff(got, model))
		}
	}
	verify(s.URI("pat"), "same serve")
	s.StopAndDropCache()

	s2 := startServe(t, vol)
	verify(s2.URI("pat"), "after restart with an empty cache")
	// And once more through the now warm cache.
	verify(s2.URI("pat"), "after restart, warm cache")
	s2.StopOK()
}

// firstDiff returns the first index where a and b differ (or the shorter
// length).
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
