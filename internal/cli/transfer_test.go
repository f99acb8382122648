package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// openTestPool opens the pool at poolURL in-process, closing it with t.
func openTestPool(t *testing.T, poolURL string) *volume.Pool {
	t.Helper()
	store, err := objstore.Open(context.Background(), poolURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	p, err := volume.OpenPool(context.Background(), store, volume.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// allocatedBytes is what the real du reports for path with
// --block-size=1: its allocated bytes, not its apparent size. The issue
// asked for du itself, so a missing du fails the test instead of falling
// back to stat.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	du, err := exec.LookPath("du")
	if err != nil {
		t.Fatalf("du is needed to measure the image's allocation: %v", err)
	}
	out, err := exec.Command(du, "--block-size=1", "--", path).Output()
	if err != nil {
		t.Fatalf("du %s: %v", path, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		t.Fatalf("du %s printed %q, want SIZE PATH", path, out)
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		t.Fatalf("du %s printed %q: %v", path, out, err)
	}
	return n
}

// TestExportSparseAsWritten: a 1 GiB volume written at a few scattered
// places exports to an image whose allocation is what was written (not a
// 4 MiB block per write, as when export scanned fixed blocks for zeros),
// with the zero page inside a written range a hole too, and identical
// content.
func TestExportSparseAsWritten(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	const size = 1 << 30
	mustRun(t, "create", pool+"/v", "--size", "1G")
	p := openTestPool(t, pool)
	v, err := p.Open(ctx, "v", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	type write struct {
		off  int64
		data []byte
	}
	var writes []write
	var written int64
	for i := range 24 {
		// 64 KiB at a 4 KiB-aligned offset in the i-th 40 MiB stripe, so
		// no two writes share an old 4 MiB export block.
		off := int64(i)*40<<20 + rng.Int64N(36<<20)&^4095
		data := make([]byte, 64<<10)
		for j := range data {
			data[j] = byte(rng.Uint32() | 1)
		}
		writes = append(writes, write{off, data})
		written += int64(len(data))
	}
	// One 1 MiB write whose middle page is zeros: data in a record, but
	// still a hole in the image.
	big := bytes.Repeat([]byte{7}, 1<<20)
	clear(big[512<<10 : 516<<10])
	writes = append(writes, write{size - 1<<20, big})
	written += int64(len(big)) - 4<<10
	for _, w := range writes {
		if err := v.WriteAt(ctx, w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "out.raw")
	mustRun(t, "export", pool+"/v", out)
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Fatalf("exported image is %d bytes, want the volume's %d", fi.Size(), size)
	}
	// Slack: the filesystem's own extent blocks for 26 extents.
	alloc, limit := allocatedBytes(t, out), written+64<<10
	if alloc > limit {
		t.Fatalf("exported image allocates %d bytes for %d written (limit %d): not sparse as written", alloc, written, limit)
	}
	if alloc < written {
		t.Fatalf("du says the exported image allocates %d bytes, less than the %d written", alloc, written)
	}

	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 4<<20)
	got := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(got)) {
		clear(want)
		for _, w := range writes {
			lo, hi := max(w.off, off), min(w.off+int64(len(w.data)), off+int64(len(want)))
			if lo < hi {
				copy(want[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
			}
		}
		if _, err := io.ReadFull(f, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("exported image differs from the volume in [%d, %d)", off, off+int64(len(got)))
		}
	}
}

// TestExportRefusesExistingFileFirst: an existing output file is reported
// before the volume URL is even looked at (so before a pool is opened or an
// export cache made), and is left untouched; a failed export removes the
// file it created.
func TestExportRefusesExistingFileFirst(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.raw")
	if err := os.WriteFile(out, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := "file://" + filepath.Join(dir, "nopool") + "/v"
	_, err := run(t, context.Background(), "export", missing, out)
	if err == nil || !strings.Contains(err.Error(), "exists (use --force") {
		t.Fatalf("export to an existing file from a missing pool: %v, want the file named as existing", err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "keep" {
		t.Fatalf("existing file changed: %q %v", b, err)
	}

	fresh := filepath.Join(dir, "fresh.raw")
	_, err = run(t, context.Background(), "export", missing, fresh)
	if !errors.Is(err, volume.ErrNoPool) {
		t.Fatalf("export from a missing pool: %v, want ErrNoPool", err)
	}
	if _, serr := os.Stat(fresh); !os.IsNotExist(serr) {
		t.Fatalf("failed export left %s behind (stat: %v)", fresh, serr)
	}
}

// TestImportBadInput: each mistake is refused naming what was wrong, and
// a refused import creates no volume.
func TestImportBadInput(t *testing.T) {
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	img := filepath.Join(dir, "in.raw")
	if err := os.WriteFile(img, bytes.Repeat([]byte{1}, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.raw")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "create", pool+"/small", "--size", "1M")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"import", filepath.Join(dir, "missing.raw"), pool + "/v"}, "missing.raw: no such file"},
		{[]string{"import", dir, pool + "/v"}, "is not a regular file"},
		{[]string{"import", img, pool + "/v", "--size", "lots"}, "--size"},
		{[]string{"import", img, pool + "/v", "--size", "0"}, "--size: a volume cannot be empty"},
		{[]string{"import", img, pool + "/v", "--size", "1M"}, "--size 1M is smaller than"},
		{[]string{"import", empty, pool + "/v"}, "empty.raw is empty"},
		{[]string{"import", img, pool + "/small"}, "does not fit volume small"},
		{[]string{"import", img, pool + "/small", "--size", "x"}, "--size"},
		{[]string{"import", img}, "expected a raw image file and a volume URL"},
	}
	for _, c := range cases {
		_, err := run(t, context.Background(), c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("urldisk %v: %v, want an error saying %q", c.args, err, c.want)
		}
	}
	if out := mustRun(t, "ls", pool); strings.Contains(out, "\nv ") {
		t.Errorf("a refused import created the volume:\n%s", out)
	}
	out := mustRun(t, "import", img, pool+"/v", "--size", "8M")
	if !strings.Contains(out, "imported "+img+" (3 MiB) into v") {
		t.Errorf("import: %q", out)
	}
	if info := mustRun(t, "info", pool+"/v"); !strings.Contains(info, "8 MiB") {
		t.Errorf("import --size 8M made:\n%s", info)
	}
}
