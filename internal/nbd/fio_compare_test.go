//go:build linux

package nbd

// A reproducible fio comparison of this server against nbdkit, for
// performance work. It is skipped unless NBD_FIO_COMPARE is set:
//
//	NBD_FIO_COMPARE=1 go test -run TestFioCompare -v -timeout 30m ./internal/nbd/
//
// Environment:
//
//	NBD_FIO_COMPARE   non-empty to run
//	NBD_FIO_REPS      repetitions of each workload per server (default 3)
//	NBD_FIO_RUNTIME   seconds per fio run (default 5)
//	NBD_FIO_JOBS      comma-separated workloads (default all; see fioWorkloads)
//	NBD_FIO_NBDKIT    nbdkit plugins to compare with: "file", "memory" or
//	                  "file,memory" (default file; file is a warm file in /dev/shm)
//	NBD_FIO_CPUPROFILE, NBD_FIO_MEMPROFILE
//	                  write pprof profiles of this process (our server) while
//	                  fio runs against it
//
// Each fio run starts in a fresh temporary directory (fio writes *.state
// files into its working directory). Runs of the servers are interleaved so
// that machine noise affects them alike; the median of the repetitions is
// reported. The CPU column is this process's CPU time per I/O, i.e. our
// server's (fio and nbdkit are other processes).
//
// For syscall counts per request, serve with TestFioServe and attach
// perf stat -p PID -e 'syscalls:sys_enter_*' while fio runs.

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

type fioWorkload struct {
	name  string
	rw    string
	bs    string
	depth int
}

var fioWorkloads = []fioWorkload{
	{"randread-4k-qd32", "randread", "4k", 32},
	{"randread-4k-qd1", "randread", "4k", 1},
	{"randwrite-4k-qd32", "randwrite", "4k", 32},
	{"randread-1m-qd8", "randread", "1m", 8},
}

type fioResult struct {
	iops   float64
	meanUs float64 // mean completion latency
	p99Us  float64
	mibps  float64
	cpuUs  float64 // this process's CPU time per I/O (our server only; 0 for nbdkit)
}

// BenchmarkFioCompare is a measurement tool, not a test: it runs fio
// against this server and nbdkit in the same run and logs the table.
//
//	go test -run '^$' -bench FioCompare -benchtime 1x ./internal/nbd/
func BenchmarkFioCompare(bb *testing.B) {
	var t testing.TB = bb
	for _, bin := range []string{"fio", "nbdkit"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found", bin)
		}
	}
	reps := envInt(t, "NBD_FIO_REPS", 3)
	runtimeSec := envInt(t, "NBD_FIO_RUNTIME", 5)
	workloads := fioWorkloads
	if s := os.Getenv("NBD_FIO_JOBS"); s != "" {
		workloads = nil
		for _, name := range strings.Split(s, ",") {
			i := slices.IndexFunc(fioWorkloads, func(w fioWorkload) bool { return w.name == name })
			if i < 0 {
				t.Fatalf("unknown workload %q", name)
			}
			workloads = append(workloads, fioWorkloads[i])
		}
	}
	plugins := []string{"file"}
	if s := os.Getenv("NBD_FIO_NBDKIT"); s != "" {
		plugins = strings.Split(s, ",")
	}

	const size = 256 << 20
	dir := shortTempDir(t)

	// Our server with an in-memory disk.
	srv := newTestServer(t, Options{
		Exports: map[string]Export{"disk": {Device: warmRAMDisk(size)}},
		Logger:  slog.New(slog.DiscardHandler),
	})
	ourSock := serveUnix(t, srv)
	servers := []struct{ name, uri string }{{"urldisk", "nbd+unix:///disk?socket=" + ourSock}}

	for _, plugin := range plugins {
		sock := filepath.Join(dir, "nbdkit-"+plugin+".sock")
		args := []string{"--unix", sock, "--foreground", "--exit-with-parent"}
		switch plugin {
		case "memory":
			args = append(args, "memory", strconv.Itoa(size))
		case "file":
			shm, err := os.MkdirTemp("/dev/shm", "nbdfio")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(shm) })
			img := filepath.Join(shm, "disk.img")
			if err := os.WriteFile(img, make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
			args = append(args, "file", img)
		default:
			t.Fatalf("unknown nbdkit plugin %q", plugin)
		}
		cmd := exec.Command("nbdkit", args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("nbdkit %s did not create its socket", plugin)
			}
			time.Sleep(20 * time.Millisecond)
		}
		servers = append(servers, struct{ name, uri string }{"nbdkit-" + plugin, "nbd+unix:///?socket=" + sock})
	}

	if p := os.Getenv("NBD_FIO_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if p := os.Getenv("NBD_FIO_MEMPROFILE"); p != "" {
		runtime.MemProfileRate = 4096
		defer func() {
			f, err := os.Create(p)
			if err != nil {
				t.Error(err)
				return
			}
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}()
	}

	// Warm-up: one short run against each server.
	for _, s := range servers {
		runFio(t, s.uri, fioWorkload{"warmup", "randread", "4k", 32}, 1)
	}

	results := make(map[string]map[string][]fioResult) // workload -> server -> runs
	for _, w := range workloads {
		results[w.name] = make(map[string][]fioResult)
		for range reps {
			for _, s := range servers {
				cpu0 := processCPU()
				r := runFio(t, s.uri, w, runtimeSec)
				if s.name == "urldisk" {
					r.cpuUs = (processCPU() - cpu0).Seconds() * 1e6 / (r.iops * float64(runtimeSec))
				}
				results[w.name][s.name] = append(results[w.name][s.name], r)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\n%-18s %-14s %10s %10s %10s %10s %10s   %s\n", "workload", "server", "IOPS", "MiB/s", "mean us", "p99 us", "CPU us/IO", "IOPS of each run")
	for _, w := range workloads {
		base := median(results[w.name]["urldisk"], func(r fioResult) float64 { return r.iops })
		for _, s := range servers {
			runs := results[w.name][s.name]
			iops := median(runs, func(r fioResult) float64 { return r.iops })
			var each []string
			for _, r := range runs {
				each = append(each, fmt.Sprintf("%.0f", r.iops))
			}
			fmt.Fprintf(&b, "%-18s %-14s %10.0f %10.1f %10.1f %10.1f %10.1f   %s", w.name, s.name, iops,
				median(runs, func(r fioResult) float64 { return r.mibps }),
				median(runs, func(r fioResult) float64 { return r.meanUs }),
				median(runs, func(r fioResult) float64 { return r.p99Us }),
				median(runs, func(r fioResult) float64 { return r.cpuUs }),
				strings.Join(each, " "))
			if s.name != "urldisk" {
				fmt.Fprintf(&b, "   (urldisk/this: %.2fx)", base/iops)
			}
			b.WriteString("\n")
		}
	}
	t.Log(b.String())
}

// warmRAMDisk returns a RAM disk whose pages are all touched, so that
// writes do not measure the kernel's page faults (nbdkit's file plugin
// serves a file that was written in full).
func warmRAMDisk(size int64) *nbdtest.RAMDisk {
	d := nbdtest.NewRAMDisk(size, 4096, false)
	d.SetBytes(0, make([]byte, size))
	return d
}

// processCPU returns the user+system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func envInt(t testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

func median(rs []fioResult, f func(fioResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

func runFio(t testing.TB, uri string, w fioWorkload, seconds int) fioResult {
	t.Helper()
	cmd := exec.Command("fio", "--name="+w.name, "--ioengine=nbd", "--uri="+uri,
		"--rw="+w.rw, "--bs="+w.bs, "--iodepth="+strconv.Itoa(w.depth),
		"--runtime="+strconv.Itoa(seconds), "--time_based", "--size=256m",
		"--output-format=json")
	cmd.Dir = t.TempDir() // fio writes *.state files into its cwd
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fio %s on %s: %v\n%s", w.name, uri, err, out)
	}
	if i := strings.Index(string(out), "{"); i > 0 {
		out = out[i:]
	}
	type side struct {
		IOPS  float64 `json:"iops"`
		BW    float64 `json:"bw_bytes"`
		ClatN struct {
			Mean       float64            `json:"mean"`
			Percentile map[string]float64 `json:"percentile"`
		} `json:"clat_ns"`
	}
	var res struct {
		Jobs []struct {
			Error int  `json:"error"`
			Read  side `json:"read"`
			Write side `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("parse fio output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		t.Fatalf("fio job failed: %s", out)
	}
	s := res.Jobs[0].Read
	if strings.Contains(w.rw, "write") {
		s = res.Jobs[0].Write
	}
	return fioResult{
		iops:   s.IOPS,
		meanUs: s.ClatN.Mean / 1e3,
		p99Us:  s.ClatN.Percentile["99.000000"] / 1e3,
		mibps:  s.BW / (1 << 20),
	}
}

// TestFioServe serves a 256 MiB RAM disk as "disk" on the unix socket named
// by NBD_FIO_SERVE for NBD_FIO_SERVE_SECONDS (default 60), for driving the
// server by hand (fio, perf, strace):
//
//	NBD_FIO_SERVE=/tmp/nbd.sock go test -run '^$' -bench FioServe -benchtime 1x ./internal/nbd/
//	fio --ioengine=nbd --uri='nbd+unix:///disk?socket=/tmp/nbd.sock' ...
func BenchmarkFioServe(bb *testing.B) {
	var t testing.TB = bb
	path := os.Getenv("NBD_FIO_SERVE")
	if path == "" {
		t.Fatal("set NBD_FIO_SERVE=/path/to/socket to serve a RAM disk")
	}
	srv := newTestServer(t, Options{
		Exports: map[string]Export{"disk": {Device: warmRAMDisk(256 << 20)}},
		Logger:  slog.New(slog.DiscardHandler),
	})
	os.Remove(path)
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, ln)
	time.Sleep(time.Duration(envInt(t, "NBD_FIO_SERVE_SECONDS", 60)) * time.Second)
}
