package e2efleet

import (
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkMigrateDowntime migrates a running counter machine back and
// forth between two agents (versitygw pool) and reports its downtime: from
// the old host's stop (SIGTERM to the workload) to the first request the
// new host serves, as the agents measure it. Volumes of 1 GiB (filled
// with random data but for the counter's first 16 MiB) and 32 GiB (the
// same 1 GiB of data, the rest never written) show that downtime does not
// depend on volume size: nothing is copied. For comparison it times copying the bytes: `urldisk export` of
// the volume (a full read from the object store) and a dd of the volume's
// size to a local file with fdatasync.
//
//	go test -run '^$' -bench MigrateDowntime -benchtime 20x ./internal/e2efleet
func BenchmarkMigrateDowntime(b *testing.B) {
	dataFile := filepath.Join(b.TempDir(), "data.img")
	writeRandom(b, dataFile, 1<<30)
	for _, size := range []string{"1G", "32G"} {
		b.Run("size="+size, func(b *testing.B) {
			e := newEnv(b)
			vol := e.volumeURL("bench")
			e.mustCLI("create", vol, "--size", size)
			start := time.Now()
			e.mustCLI("import", dataFile, vol)
			b.Logf("imported 1 GiB of random data into the %s volume in %v", size, time.Since(start).Round(time.Millisecond))
			e.startAgent("h1")
			e.startAgent("h2")
			acks := filepath.Join(e.dir, "bench.acks")
			e.mustCLI("machine", "run", "bench", "--volume", vol, "--runtime", "process", "--host", "h1", "--wait", "60s",
				"--", counterBin, "--acks", acks, "--interval", "50ms")
			e.waitAcks(acks, "h1", 3)

			var downs []time.Duration
			hosts := []string{"h2", "h1"}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				to := hosts[i%2]
				out := e.mustCLI("migrate", "bench", to)
				downs = append(downs, downtime(b, out))
				b.StopTimer()
				e.waitAcks(acks, to, 3)
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(downs)
			var sum time.Duration
			for _, d := range downs {
				sum += d
			}
			mean := sum / time.Duration(len(downs))
			b.ReportMetric(float64(mean)/1e6, "downtime-ms/op")
			b.ReportMetric(float64(downs[len(downs)/2])/1e6, "p50-downtime-ms")
			b.ReportMetric(float64(downs[len(downs)-1])/1e6, "max-downtime-ms")

			// The alternative: copy the bytes.
			exp := filepath.Join(e.dir, "export.img")
			start = time.Now()
			e.mustCLI("export", vol, exp)
			exportTook := time.Since(start)
			os.Remove(exp)
			ddTook := ddTime(b, filepath.Join(e.dir, "dd.img"), size)
			b.ReportMetric(exportTook.Seconds(), "export-s")
			b.ReportMetric(ddTook.Seconds(), "dd-s")
			b.Logf("| %s | %d | %.0f | %.0f | %.0f | %.1f | %.1f |", size, len(downs),
				float64(mean)/1e6, float64(downs[len(downs)/2])/1e6, float64(downs[len(downs)-1])/1e6, exportTook.Seconds(), ddTook.Seconds())
		})
	}
}

// writeRandom writes an n-byte image to path: a 16 MiB hole (where the
// counter keeps its records), then random bytes.
func writeRandom(b *testing.B, path string, n int64) {
	const hole = 16 << 20
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(hole, io.SeekStart); err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, n-hole); err != nil {
		b.Fatal(err)
	}
}

// ddTime times writing size bytes of zeros to path with dd (fdatasync at
// the end), then removes the file.
func ddTime(b *testing.B, path, size string) time.Duration {
	count := map[string]string{"1G": "1024", "32G": "32768"}[size]
	start := time.Now()
	out, err := exec.Command("dd", "if=/dev/zero", "of="+path, "bs=1M", "count="+count, "conv=fdatasync").CombinedOutput()
	took := time.Since(start)
	os.Remove(path)
	if err != nil {
		b.Fatalf("dd: %v\n%s", err, out)
	}
	return took
}
