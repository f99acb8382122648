package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// fioJob is the part of fio's JSON output the tests check.
type fioJob struct {
	Name  string `json:"jobname"`
	Error int    `json:"error"`
	Write struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"write"`
	Read struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"read"`
}

// runFio runs fio with the nbd engine against uri (in a temporary working
// directory, where it leaves its verify state files) and returns its jobs.
// It fails t if fio exits non-zero, reports a job error or prints a
// verification complaint.
func runFio(t *testing.T, uri string, args ...string) []fioJob {
	t.Helper()
	full := append([]string{"--ioengine=nbd", "--uri=" + uri, "--output-format=json"}, args...)
	r := run(t, "fio", full...)
	if r.code != 0 {
		t.Fatalf("fio failed:\n%s", r)
	}
	// The JSON output has option names such as "verify" in it: look for
	// complaints on stderr only.
	for _, bad := range []string{"verify", "bad magic", "crc32c", "error"} {
		if strings.Contains(strings.ToLower(r.stderr), bad) {
			t.Fatalf("fio reported %q:\n%s", bad, r)
		}
	}
	out := r.stdout
	if i := strings.Index(out, "{"); i > 0 {
		out = out[i:] // fio may print notes before the JSON
	}
	var res struct {
		Jobs []fioJob `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("parse fio output: %v\n%s", err, r)
	}
	for _, j := range res.Jobs {
		if j.Error != 0 {
			t.Fatalf("fio job %s: error %d\n%s", j.Name, j.Error, r)
		}
	}
	return res.Jobs
}

// TestFioVerify runs fio's nbd engine: two jobs (two connections) write
// random blocks of 4–64 KiB with crc32c verification headers into
// disjoint 64 MiB halves of a volume at queue depth 8 and verify them; then
// serve restarts with an empty cache and fio verifies the same workload
// again (--verify_only).
func TestFioVerify(t *testing.T) {
	vol := volURL(filePool(t), "fio")
	s := startServe(t, vol, "--create", "--size", "128M")
	job := []string{
		"--name=v", "--rw=randwrite", "--bsrange=4k-64k",
		"--size=64m", "--numjobs=2", "--offset_increment=64m",
		"--iodepth=8", "--verify=crc32c", "--verify_fatal=1", "--randseed=42",
	}
	jobs := runFio(t, s.URI("fio"), append(job, "--do_verify=1")...)
	if len(jobs) != 2 {
		t.Fatalf("fio ran %d jobs, want 2", len(jobs))
	}
	for _, j := range jobs {
		if j.Write.IOBytes != 64<<20 || j.Read.IOBytes != 64<<20 {
			t.Errorf("fio job wrote %d and verified %d bytes, want %d each", j.Write.IOBytes, j.Read.IOBytes, 64<<20)
		}
	}
	s.StopAndDropCache()

	s2 := startServe(t, vol)
	jobs = runFio(t, s2.URI("fio"), append(job, "--verify_only")...)
	for _, j := range jobs {
		if j.Read.IOBytes != 64<<20 {
			t.Errorf("fio --verify_only read %d bytes, want %d", j.Read.IOBytes, 64<<20)
		}
	}
	s2.StopOK()
}
