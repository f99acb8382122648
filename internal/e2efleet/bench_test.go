package e2efleet

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
	"github.com/urldisk/urldisk/internal/testutil/vmimage"
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

// writeScattered writes a sparse n-byte image to path: random block-byte
// blocks every stride bytes from start, holes elsewhere.
func writeScattered(b *testing.B, path string, n, start, stride, block int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, block)
	for off := start; off+block <= n; off += stride {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
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

// remoteEnv is newEnv with the agents and the CLI talking to versitygw
// through a latencyproxy with the remote profile (20 ms before each GET and
// HEAD, 30 ms before each PUT, 100 MB/s per stream). It also returns the
// direct pool URL, for set-up that should not pay the proxy (imports).
func remoteEnv(b *testing.B) (e *env, direct string) {
	b.Helper()
	e = newEnv(b)
	u, err := url.Parse(e.pool)
	if err != nil {
		b.Fatal(err)
	}
	q := u.Query()
	p, err := latencyproxy.Start(q.Get("endpoint"), latencyproxy.Remote())
	if err != nil {
		b.Fatal(err)
	}
	// Cleanups run last-registered first: stop the agents (their final
	// flushes go through the proxy) before the proxy.
	b.Cleanup(func() { p.Close() })
	b.Cleanup(e.stopAll)
	q.Set("endpoint", p.URL)
	u.RawQuery = q.Encode()
	direct, e.pool = e.pool, u.String()
	return e, direct
}

// poolVolume is the URL of volume name in the pool at poolURL.
func poolVolume(poolURL, name string) string {
	before, query, _ := strings.Cut(poolURL, "?")
	return before + "/" + name + "?" + query
}

// prefetchLog returns the agent's last "prefetched the previous host's
// working set" log line ("" if none): what the prefetch fetched and took.
func (e *env) prefetchLog(host string) string {
	e.mu.Lock()
	a := e.agents[host]
	e.mu.Unlock()
	last := ""
	for _, l := range strings.Split(a.out.String(), "\n") {
		if strings.Contains(l, "prefetched the previous host's working set") {
			last = l
		}
	}
	return last
}

// readerProgress is what the reader workload reported on one host.
type readerProgress struct {
	start time.Time
	ticks []readerTick
	pass  time.Time // its first full round of the working set; zero before
}

type readerTick struct {
	t     time.Time
	bytes int64
}

// readProgress parses the reader's progress file for host's newest start.
func readProgress(t testing.TB, path, host string) readerProgress {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var p readerProgress
	unix := func(s string) time.Time { n, _ := strconv.ParseInt(s, 10, 64); return time.Unix(0, n) }
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 1 && f[0] == "error":
			t.Fatalf("reader workload failed: %s", line)
		case len(f) == 3 && f[0] == "start" && f[2] == host:
			p = readerProgress{start: unix(f[1])}
		case len(f) == 4 && f[0] == "tick" && f[3] == host:
			n, _ := strconv.ParseInt(f[2], 10, 64)
			p.ticks = append(p.ticks, readerTick{unix(f[1]), n})
		case len(f) == 3 && f[0] == "pass" && f[2] == host && p.pass.IsZero():
			p.pass = unix(f[1])
		}
	}
	return p
}

// rateAfter returns the bytes the reader read in its first d after
// starting, divided by the exact time the tick that ends them was taken
// at (the first tick at or after start+d); ok is false before that tick.
func (p readerProgress) rateAfter(d time.Duration) (mibps float64, ok bool) {
	for _, tk := range p.ticks {
		if el := tk.t.Sub(p.start); el >= d {
			return float64(tk.bytes) / (1 << 20) / el.Seconds(), true
		}
	}
	return 0, false
}

// BenchmarkFirstMinuteAfterMove: a machine (process runtime, the reader
// workload) reads its working set at random, 64 KiB reads on 4
// connections, on the remote profile: 2032 blocks of 64 KiB, one per MiB
// of a 2 GiB volume (127 MiB of hot data scattered like a database's hot
// pages; the rest of the volume was never written). Once it has read its
// working set on h1 (and its warm rate there is measured), it is migrated
// b.N times to a fresh host with prefetch (the agent's access-trace
// prefetch) and to a fresh host without (--trace-pages 0), and it reports
// the read throughput over the first 5 s and 20 s after each move (the
// reader's own clock, from its start on the new host) and the time until
// it had read its whole working set once there. (20 s rather than a
// minute: the working set is read well within it either way.)
//
//	flock /tmp/urldisk-bench.lock go test -run '^$' -bench FirstMinuteAfterMove -benchtime 2x -timeout 30m ./internal/e2efleet
func BenchmarkFirstMinuteAfterMove(b *testing.B) {
	const (
		window  = 20 * time.Second
		early   = 5 * time.Second
		volSize = 2 << 30
		wsStart = 16 << 20
		stride  = 1 << 20
		block   = 64 << 10
	)
	reader := filepath.Join(b.TempDir(), "reader")
	vmimage.GoBuild(b, "./internal/e2efleet/reader", reader)
	dataFile := filepath.Join(b.TempDir(), "data.img")
	writeScattered(b, dataFile, volSize, wsStart, stride, block)
	e, direct := remoteEnv(b)
	vol := e.volumeURL("ws")
	e.mustCLI("create", poolVolume(direct, "ws"), "--size", strconv.Itoa(volSize))
	e.mustCLI("import", dataFile, poolVolume(direct, "ws"))
	big := []string{"--cache-size", "1G"} // the working set fits with room to spare
	e.startAgent("h1", big...)
	progress := filepath.Join(e.dir, "reader.progress")
	e.mustCLI("machine", "run", "ws", "--volume", vol, "--runtime", "process", "--host", "h1", "--wait", "60s",
		"--", reader, "--progress", progress, "--offset", strconv.Itoa(wsStart), "--size", strconv.Itoa(volSize-wsStart),
		"--stride", strconv.Itoa(stride), "--block", strconv.Itoa(block))
	var warm float64
	e.waitFor("the working set read once on h1", 5*time.Minute, func() bool { return !readProgress(b, progress, "h1").pass.IsZero() })
	from := readProgress(b, progress, "h1")
	e.waitFor("a warm window on h1", 2*window, func() bool {
		p := readProgress(b, progress, "h1")
		last, first := p.ticks[len(p.ticks)-1], from.ticks[len(from.ticks)-1]
		if el := last.t.Sub(first.t); el >= window {
			warm = float64(last.bytes-first.bytes) / (1 << 20) / el.Seconds()
			return true
		}
		return false
	})
	b.Logf("warm on h1: %.1f MiB/s", warm)

	type sample struct{ early, rate, pass float64 }
	results := map[string][]sample{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, prefetch := range []bool{true, false} {
			host, extra := fmt.Sprintf("p%d", i), big
			if !prefetch {
				host, extra = fmt.Sprintf("n%d", i), append([]string{"--trace-pages", "0"}, big...)
			}
			e.startAgent(host, extra...)
			b.StopTimer() // the time is the move's and the window's, reported below
			out := e.mustCLI("migrate", "ws", host)
			var rate, fast float64
			e.waitFor("a 20 s window on "+host, 2*time.Minute, func() bool {
				var ok bool
				rate, ok = readProgress(b, progress, host).rateAfter(window)
				return ok
			})
			fast, _ = readProgress(b, progress, host).rateAfter(early)
			e.waitFor("the working set read once on "+host, 5*time.Minute, func() bool { return !readProgress(b, progress, host).pass.IsZero() })
			p := readProgress(b, progress, host)
			s := sample{fast, rate, p.pass.Sub(p.start).Seconds()}
			key := map[bool]string{true: "prefetch", false: "cold"}[prefetch]
			results[key] = append(results[key], s)
			b.Logf("%s: %s; first %v: %.1f MiB/s, first %v: %.1f MiB/s; working set read once after %.1f s; %s", host, strings.TrimSpace(out), early, s.early, window, s.rate, s.pass, e.prefetchLog(host))
			b.StartTimer()
		}
	}
	b.StopTimer()
	mean := func(ss []sample, f func(sample) float64) float64 {
		var sum float64
		for _, s := range ss {
			sum += f(s)
		}
		return sum / float64(len(ss))
	}
	rate := func(s sample) float64 { return s.rate }
	fast := func(s sample) float64 { return s.early }
	pass := func(s sample) float64 { return s.pass }
	b.ReportMetric(warm, "warm-MiB/s")
	b.ReportMetric(mean(results["cold"], fast), "cold-5s-MiB/s")
	b.ReportMetric(mean(results["prefetch"], fast), "prefetch-5s-MiB/s")
	b.ReportMetric(mean(results["cold"], rate), "cold-20s-MiB/s")
	b.ReportMetric(mean(results["prefetch"], rate), "prefetch-20s-MiB/s")
	b.ReportMetric(mean(results["cold"], pass), "cold-wset-s")
	b.ReportMetric(mean(results["prefetch"], pass), "prefetch-wset-s")
	b.Logf("| warm (h1, steady) | %.1f MiB/s | | |", warm)
	for _, k := range []string{"cold", "prefetch"} {
		r := results[k]
		b.Logf("| moved, %s | %.1f MiB/s (%.2fx) | %.1f MiB/s (%.2fx) | %.1f s |", k,
			mean(r, fast), mean(r, fast)/warm, mean(r, rate), mean(r, rate)/warm, mean(r, pass))
	}
}

// guestBooted is the guest init's first console line: the root filesystem
// is mounted and /init was read from it.
const guestBooted = vmimage.GuestMarker + "boot mode="

// timeBoot runs `urldisk args...` (a command that starts a qemu machine on
// a host: machine run, migrate) and meanwhile polls the machine's console
// log there for what the new boot appends (the agent's qemu appends):
// it returns the time from the first new console output (the kernel's
// first line, earlyprintk) to the guest init's boot marker. The command is
// run alongside, as it returns only once the guest's first disk request
// was served, well after the kernel started.
func (e *env) timeBoot(console string, timeout time.Duration, args ...string) time.Duration {
	e.t.Helper()
	var from int64
	if fi, err := os.Stat(console); err == nil {
		from = fi.Size()
	}
	done := make(chan cliResult, 1)
	go func() { done <- e.cli(args...) }()
	var first, booted time.Time
	e.waitFor("the guest's boot marker in "+console, timeout, func() bool {
		b, _ := os.ReadFile(console)
		if int64(len(b)) < from {
			from = 0 // a new file
		}
		now := time.Now()
		if int64(len(b)) > from && first.IsZero() {
			first = now
		}
		if bytes.Contains(b[from:], []byte(guestBooted)) {
			booted = now
			return true
		}
		return false
	})
	if r := <-done; r.code != 0 {
		e.t.Fatalf("command failed:\n%s", r)
	}
	return booted.Sub(first)
}

// BenchmarkColdVMBoot boots the e2evm guest (the Debian cloud kernel, its
// root filesystem on a urldisk volume through NVMe over NBD) as a qemu
// machine of the agents, on the remote profile, and times each boot from
// the kernel's first console line to the guest init's first line (root
// mounted, init read from it): cold on a fresh host without prefetch
// (--trace-pages 0, and the very first boot, which has no trace), warm on
// h1 (its cache holds what its earlier boots read; the blocks the guest
// wrote elsewhere since are fetched, with the trace's prefetch), and cold
// on a fresh host with the access-trace prefetch of the previous traced
// run. Each iteration moves the machine to a fresh host with prefetch, a
// fresh host without, then back to h1.
//
//	flock /tmp/urldisk-bench.lock go test -run '^$' -bench ColdVMBoot -benchtime 1x -count 3 -timeout 40m ./internal/e2efleet
func BenchmarkColdVMBoot(b *testing.B) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Fatalf("qemu-system-x86_64 not found: install the Debian package qemu-system-x86 (scripts/install-test-deps.sh): %v", err)
	}
	kernel := vmimage.Kernel(b)
	img := vmimage.BuildRootFS(b, b.TempDir(), vmimage.BuildGuestInit(b))
	e, direct := remoteEnv(b)
	vol := e.volumeURL("vmroot")
	e.mustCLI("import", img, poolVolume(direct, "vmroot"))
	grace := []string{"--stop-grace", "3s"}
	e.startAgent("h1", grace...)
	console := func(host string) string { return filepath.Join(e.dir, host, "machines", "vm", "console.log") }
	kcmd := "root=/dev/nvme0n1 rootfstype=ext4 rootwait rw console=ttyS0 earlyprintk=serial,ttyS0 init=/init panic=-1 nokaslr mitigations=off no_timer_check urldisk.mode=loop urldisk.interval=1s"
	first := e.timeBoot(console("h1"), 5*time.Minute, "machine", "run", "vm", "--volume", vol, "--runtime", "qemu", "--host", "h1",
		"--kernel", kernel, "--append", kcmd, "--memory", "512", "--wait", "3m", "--", "-no-reboot")
	b.Logf("first boot, h1 cold without a trace: %v", first.Round(10*time.Millisecond))
	times := map[string][]time.Duration{"cold": {first}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for _, step := range []struct{ kind, host string }{{"prefetch", fmt.Sprintf("p%d", i)}, {"cold", fmt.Sprintf("n%d", i)}, {"warm", "h1"}} {
			switch step.kind {
			case "prefetch":
				e.startAgent(step.host, grace...)
			case "cold":
				e.startAgent(step.host, append([]string{"--trace-pages", "0"}, grace...)...)
			}
			d := e.timeBoot(console(step.host), 5*time.Minute, "migrate", "vm", step.host)
			times[step.kind] = append(times[step.kind], d)
			b.Logf("%s boot on %s: %v %s", step.kind, step.host, d.Round(10*time.Millisecond), e.prefetchLog(step.host))
		}
		b.StartTimer()
	}
	b.StopTimer()
	mean := func(ds []time.Duration) float64 {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return (sum / time.Duration(len(ds))).Seconds()
	}
	warm, cold, pf := mean(times["warm"]), mean(times["cold"]), mean(times["prefetch"])
	b.ReportMetric(warm, "warm-boot-s")
	b.ReportMetric(cold, "cold-boot-s")
	b.ReportMetric(pf, "prefetch-boot-s")
	b.ReportMetric(pf/warm, "prefetch/warm")
	b.Logf("| warm | %.2f s | 1.00x |", warm)
	b.Logf("| cold, no prefetch | %.2f s | %.2fx |", cold, cold/warm)
	b.Logf("| cold, access-trace prefetch | %.2f s | %.2fx |", pf, pf/warm)
}
