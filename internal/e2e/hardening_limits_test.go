package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
)

// procMemKiB returns serve's VmRSS or VmHWM (field) in KiB from /proc.
func procMemKiB(t *testing.T, s *server, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read serve's memory use: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s line %q: %v", field, sc.Text(), err)
			}
			return kib
		}
	}
	t.Fatalf("no %s in /proc/%d/status (err %v)", field, s.cmd.Process.Pid, sc.Err())
	return 0
}

// stallReads connects n raw clients to export name of s, each sending
// reads READs of size bytes and never reading a reply, and returns them.
func stallReads(t *testing.T, s *server, name string, n, reads int, size uint32) []*rawNBD {
	t.Helper()
	var cs []*rawNBD
	for i := range n {
		r := dialRawNBD(t, s.Socket, name)
		var b []byte
		for j := range reads {
			b = binary.BigEndian.AppendUint32(b, nbdReqMagic)
			b = binary.BigEndian.AppendUint16(b, 0)
			b = binary.BigEndian.AppendUint16(b, nbdCmdRead)
			b = binary.BigEndian.AppendUint64(b, uint64(i*reads+j+1))
			b = binary.BigEndian.AppendUint64(b, 0)
			b = binary.BigEndian.AppendUint32(b, size)
		}
		if _, err := r.c.Write(b); err != nil {
			t.Fatalf("stalled client %d: send READs: %v", i, err)
		}
		cs = append(cs, r)
	}
	return cs
}

// TestServeNonReadingClientsBoundedRSS is issue 15's finding 5 on a real
// serve: clients that send 32 MiB READs and never read the replies held
// ~64 MiB of serve's memory each, with no global cap (2.6 GiB for 40),
// and kept it. Now all of them together hold at most the server-wide
// bound (nbd.DefaultMaxQueuedBytes, 256 MiB): serve's peak RSS stays
// within it (plus its own footprint) for 16 such clients, and again for a
// second wave after the first hung up (the buffers were released and
// reused, not leaked). A connected client's FLUSH is answered meanwhile,
// and once the stalled clients are gone it reads and writes again.
func TestServeNonReadingClientsBoundedRSS(t *testing.T) {
	const (
		mib     = 1 << 20
		clients = 16
		reads   = 16
		payload = 32 * mib // serve's maximum payload
		queued  = 256 * mib
		// Serve's own footprint beyond its baseline: Go heap overhead,
		// goroutine stacks, the cache's index.
		slack = 128 * mib
	)
	vol := volURL(filePool(t), "rss")
	createVolume(t, vol, "64M")
	s := startServe(t, vol)
	good, err := nbdclient.Dial(s.URI("rss"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := good.WriteAt(bytes.Repeat([]byte{0x5a}, mib), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := good.FlushWithin(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	base := procMemKiB(t, s, "VmRSS") << 10
	limit := base + queued + slack

	for wave := 1; wave <= 2; wave++ {
		if err := good.WriteAt(bytes.Repeat([]byte{byte(wave)}, 4096), mib); err != nil {
			t.Fatalf("wave %d: write before the stalled clients: %v", wave, err)
		}
		stalled := stallReads(t, s, "rss", clients, reads, payload)
		// The clients pin memory until the bound is reached (so this test
		// measures something), and never past it.
		var peak int64
		sample := func() {
			rss := procMemKiB(t, s, "VmRSS") << 10
			peak = max(peak, rss)
			if rss > limit {
				t.Fatalf("wave %d: serve's RSS %d MiB with %d clients not reading replies, want at most %d MiB (baseline %d MiB + the 256 MiB bound + %d MiB)",
					wave, rss>>20, clients, limit>>20, base>>20, slack>>20)
			}
		}
		deadline := time.Now().Add(time.Minute)
		for sample(); peak < base+queued*3/4; sample() {
			if time.Now().After(deadline) {
				t.Fatalf("wave %d: serve's RSS only reached %d MiB (baseline %d MiB): the stalled clients did not fill the buffer bound", wave, peak>>20, base>>20)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// A FLUSH needs no payload buffer: answered while the bound is reached.
		if took, err := good.FlushWithin(30 * time.Second); err != nil || took > 5*time.Second {
			t.Errorf("wave %d: FLUSH with the buffer bound reached: %v after %s", wave, err, took)
		}
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			sample()
		}
		if hwm := procMemKiB(t, s, "VmHWM") << 10; hwm > limit {
			t.Fatalf("wave %d: serve's peak RSS (VmHWM) %d MiB, want at most %d MiB", wave, hwm>>20, limit>>20)
		}
		t.Logf("wave %d: %d clients x %d READs of 32 MiB not read: serve RSS peak %d MiB (baseline %d MiB)", wave, clients, reads, peak>>20, base>>20)

		for _, r := range stalled {
			r.c.Close()
		}
		// Their buffers are released: the good client reads and writes again.
		got := make([]byte, 4096)
		done := make(chan error, 1)
		go func() { done <- good.ReadAt(got, mib) }()
		select {
		case err := <-done:
			if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{byte(wave)}, 4096)) {
				t.Fatalf("wave %d: read after the stalled clients hung up: %v (data ok %v)", wave, err, bytes.Equal(got, bytes.Repeat([]byte{byte(wave)}, 4096)))
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("wave %d: a read 30 s after the stalled clients hung up has no answer: their buffers were not released", wave)
		}
	}
	good.Close()
	qemuIO(t, s.URI("rss"), nil, "read -P 0x5a 0 1M", "read -P 0x02 1M 4k")
	s.StopOK()
}

// TestServeReservesFDsForTheStore is issue 15's finding 5 about file
// descriptors on a real serve: 19,986 idle connections took every fd, so
// a connected client's FLUSH got no answer and uploads failed with "too
// many open files". Under RLIMIT_NOFILE 320 serve caps its connection
// limit to 64, keeping 256 fds for the store and cache: 400 idle
// connections later, the client connected before them writes 8 MiB (8
// records to upload) and flushes, and it all reads back from a new serve.
func TestServeReservesFDsForTheStore(t *testing.T) {
	const mib = 1 << 20
	vol := volURL(filePool(t), "fds")
	createVolume(t, vol, "16M")
	s := launchServeUnder(t, newHost(t), []string{toolPath(t, "prlimit"), "--nofile=320:320", "--"},
		vol, "--handshake-timeout", "5m")
	s.waitReady()
	if !s.StderrHas("max_conns=64") || !strings.Contains(s.Stderr(), "fd_reserve=256") {
		t.Fatalf("serve under RLIMIT_NOFILE 320 did not cap its connections to 64 with 256 fds reserved:\n%s", s.Stderr())
	}
	good, err := nbdclient.Dial(s.URI("fds"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()

	const idle = 400
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range idle {
		c, err := net.DialTimeout("unix", s.Socket, 10*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if !s.StderrHas("connection limit reached") {
		t.Fatalf("serve did not refuse connections over its limit:\n%s", s.Stderr())
	}

	for i := range 8 {
		if err := good.WriteAt(bytes.Repeat([]byte{byte(0x40 + i)}, mib), int64(i)*mib); err != nil {
			t.Fatalf("write MiB %d with %d idle connections: %v", i, idle, err)
		}
		if took, err := good.FlushWithin(time.Minute); err != nil {
			t.Fatalf("FLUSH of MiB %d with %d idle connections: %v after %s\n%s", i, idle, err, took, s.Stderr())
		}
	}
	if strings.Contains(s.Stderr(), "too many open files") {
		t.Errorf("serve ran out of file descriptors:\n%s", s.Stderr())
	}
	good.Close()
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	s.StopOK()

	cmds := make([]string, 8)
	for i := range cmds {
		cmds[i] = fmt.Sprintf("read -P 0x%x %dM 1M", 0x40+i, i)
	}
	r := startServe(t, vol)
	qemuIO(t, r.URI("fds"), nil, cmds...)
	r.StopOK()
}
