package nbd

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

func TestCheckRequest(t *testing.T) {
	rw := limits{Size: 1 << 20, MaxPayload: 1 << 16}
	ro := limits{Size: 1 << 20, MaxPayload: 1 << 16, ReadOnly: true}
	for _, tc := range []struct {
		name string
		r    request
		l    limits
		want verdict
	}{
		{"read", request{Type: cmdRead, Offset: 10, Length: 100}, rw, verdict{}},
		{"read to end", request{Type: cmdRead, Offset: 1<<20 - 100, Length: 100}, rw, verdict{}},
		{"read past end", request{Type: cmdRead, Offset: 1<<20 - 100, Length: 101}, rw, verdict{Errno: errInval}},
		{"read overflow", request{Type: cmdRead, Offset: 1<<64 - 1, Length: 2}, rw, verdict{Errno: errInval}},
		{"read too long", request{Type: cmdRead, Length: 1<<16 + 1}, rw, verdict{Errno: errInval}},
		{"read DF flag", request{Type: cmdRead, Flags: 1 << 2, Length: 1}, rw, verdict{Errno: errInval}},
		{"read on ro", request{Type: cmdRead, Length: 1}, ro, verdict{}},
		{"write", request{Type: cmdWrite, Flags: cmdFlagFUA, Length: 100}, rw, verdict{Payload: 100}},
		{"write past end", request{Type: cmdWrite, Offset: 1 << 20, Length: 1}, rw, verdict{Errno: errInval, Payload: 1}},
		{"write on ro", request{Type: cmdWrite, Length: 5}, ro, verdict{Errno: errPerm, Payload: 5}},
		{"write too long", request{Type: cmdWrite, Length: 1<<16 + 1}, rw, verdict{Errno: errInval, Hangup: true}},
		{"write bad flag", request{Type: cmdWrite, Flags: cmdFlagNoHole, Length: 5}, rw, verdict{Errno: errInval, Payload: 5}},
		{"trim", request{Type: cmdTrim, Length: 1 << 20}, rw, verdict{}},
		{"trim on ro", request{Type: cmdTrim, Length: 1}, ro, verdict{Errno: errPerm}},
		{"zeroes no-hole", request{Type: cmdWriteZeroes, Flags: cmdFlagNoHole | cmdFlagFUA, Length: 1 << 20}, rw, verdict{}},
		{"zeroes past end", request{Type: cmdWriteZeroes, Offset: 1, Length: 1 << 20}, rw, verdict{Errno: errInval}},
		{"flush", request{Type: cmdFlush}, ro, verdict{}},
		{"disc", request{Type: cmdDisc}, rw, verdict{Disconnect: true}},
		{"block status", request{Type: cmdBlockStatus, Length: 4096}, rw, verdict{Errno: errInval}},
		{"unknown, no length", request{Type: 99}, rw, verdict{Errno: errInval}},
		{"unknown, length", request{Type: 99, Length: 1}, rw, verdict{Errno: errInval, Hangup: true}},
	} {
		if got := checkRequest(tc.r, tc.l); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestBlockSizes(t *testing.T) {
	for _, tc := range []struct {
		dev        int
		maxPayload uint32
		pref       uint32
	}{
		{4096, 32 << 20, 4096},
		{1, 32 << 20, 512},
		{512, 32 << 20, 512},
		{6000, 32 << 20, 4096},
		{4 << 20, 32 << 20, 4 << 20},
		{64 << 20, 32 << 20, 32 << 20},
		{64 << 20, 40000, 32768},
	} {
		minimum, pref, maximum := blockSizes(tc.dev, tc.maxPayload)
		if minimum != 1 || pref != tc.pref || maximum != tc.maxPayload {
			t.Errorf("blockSizes(%d, %d) = %d/%d/%d, want 1/%d/%d", tc.dev, tc.maxPayload, minimum, pref, maximum, tc.pref, tc.maxPayload)
		}
	}
}

func TestBufPool(t *testing.T) {
	p := newBufPool(32 << 20)
	for _, n := range []int{1, 4095, 4096, 4097, 65536, 100000, 32 << 20} {
		b := p.get(n)
		if len(*b) != n || cap(*b) != classSize(n) || classSize(n) < n || classSize(n) >= 2*max(n, 4096) {
			t.Errorf("get(%d): len %d cap %d class %d", n, len(*b), cap(*b), classSize(n))
		}
		p.put(b)
	}
}

func TestNewServerValidation(t *testing.T) {
	d := nbdtest.NewRAMDisk(4096, 512, false)
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"tiny payload", Options{MaxPayload: 100}},
		{"huge payload", Options{MaxPayload: 2 << 30}},
		{"negative in-flight", Options{MaxInFlight: -1}},
		{"small buffer budget", Options{MaxBufferBytes: 1 << 20}},
		{"require TLS without config", Options{RequireTLS: true}},
		{"TLS without certificate", Options{TLSConfig: &tls.Config{}}},
		{"nil device", Options{Exports: map[string]Export{"x": {}}}},
		{"NUL in name", Options{Exports: map[string]Export{"a\x00b": {Device: d}}}},
		{"long name", Options{Exports: map[string]Export{strings.Repeat("n", 4097): {Device: d}}}},
	} {
		if _, err := NewServer(tc.opts); err == nil {
			t.Errorf("%s: NewServer accepted %+v", tc.name, tc.opts)
		}
	}
	srv, err := NewServer(Options{Exports: map[string]Export{"a": {Device: d}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddExport("a", Export{Device: d}); err == nil {
		t.Error("AddExport of a duplicate name succeeded")
	}
}

func TestListen(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "s.sock")

	// A stale socket file (nobody listening) is replaced.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	ln, err = Listen("unix:" + sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	// A live socket is not stolen.
	if _, err := Listen("unix:" + sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	uri, err := URI(ln.Addr(), "vol 1", false)
	if err != nil || uri != "nbd+unix:///vol%201?socket="+sock {
		t.Errorf("URI = %q, %v", uri, err)
	}
	uri, _ = URI(ln.Addr(), "v", true)
	if uri != "nbds+unix:///v?socket="+sock {
		t.Errorf("TLS URI = %q", uri)
	}
	ln.Close()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file remains after Close: %v", err)
	}

	// A regular file is not removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := Listen("unix:" + file); err == nil {
		t.Error("Listen over a regular file succeeded")
	}

	tl, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	uri, _ = URI(tl.Addr(), "disk", false)
	if uri != "nbd://"+tl.Addr().String()+"/disk" {
		t.Errorf("TCP URI = %q", uri)
	}
	uri, _ = URI(tl.Addr(), "disk", true)
	if uri != "nbds://"+tl.Addr().String()+"/disk" {
		t.Errorf("TCP TLS URI = %q", uri)
	}

	for _, bad := range []string{"", "unix:", "/path", "udp:1.2.3.4:5", "tcp:"} {
		if _, err := Listen(bad); err == nil {
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
}

// Listen + URI work with a real client, and an export named with spaces.
func TestURIWithClient(t *testing.T) {
	d := nbdtest.NewRAMDisk(1<<20, 4096, false)
	srv := newTestServer(t, Options{Exports: map[string]Export{"my disk/1": {Device: d}}})
	path := filepath.Join(shortTempDir(t), "a b.sock")
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, srv, ln)
	uri, err := URI(ln.Addr(), "my disk/1", false)
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, "nbdinfo", "--size", uri)
	if strings.TrimSpace(out) != "1048576" {
		t.Errorf("nbdinfo --size %s = %q", uri, out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 7 0 4k", uri)
	if d.Bytes()[4095] != 7 {
		t.Error("qemu-io write through URI did not land")
	}
}
