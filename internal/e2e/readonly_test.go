package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rawNBD is a minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME,
// simple replies) that, unlike libnbd and qemu, sends whatever it is told,
// so a test can check what the server itself does with a write to a
// read-only export.
type rawNBD struct {
	c      net.Conn
	size   uint64
	tflags uint16
	cookie uint64
}

const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic    = 0x49484156454f5054 // "IHAVEOPT"
	nbdReqMagic    = 0x25609513
	nbdSimpleReply = 0x67446698
	nbdOptExport   = 1
	nbdCmdRead     = 0
	nbdCmdWrite    = 1
	nbdCmdDisc     = 2
	nbdFlagRO      = 1 << 1
	nbdEPERM       = 1
)

func dialRawNBD(t *testing.T, socket, export string) *rawNBD {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	var hello struct {
		Magic, OptMagic uint64
		Flags           uint16
	}
	if err := binary.Read(c, binary.BigEndian, &hello); err != nil {
		t.Fatalf("raw NBD: read greeting: %v", err)
	}
	if hello.Magic != nbdMagic || hello.OptMagic != nbdOptMagic {
		t.Fatalf("raw NBD: bad greeting %+v", hello)
	}
	noZeroes := hello.Flags&2 != 0
	clientFlags := uint32(1) // NBD_FLAG_C_FIXED_NEWSTYLE
	if noZeroes {
		clientFlags |= 2 // NBD_FLAG_C_NO_ZEROES
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, clientFlags)
	b = binary.BigEndian.AppendUint64(b, nbdOptMagic)
	b = binary.BigEndian.AppendUint32(b, nbdOptExport)
	b = binary.BigEndian.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	if _, err := c.Write(b); err != nil {
		t.Fatalf("raw NBD: send option: %v", err)
	}
	r := &rawNBD{c: c}
	if err := binary.Read(c, binary.BigEndian, &r.size); err != nil {
		t.Fatalf("raw NBD: export %q refused: %v", export, err)
	}
	if err := binary.Read(c, binary.BigEndian, &r.tflags); err != nil {
		t.Fatal(err)
	}
	if !noZeroes {
		if _, err := io.ReadFull(c, make([]byte, 124)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// request sends one command and returns the reply's error value and, for
// a read, the data.
func (r *rawNBD) request(t *testing.T, typ uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	t.Helper()
	r.cookie++
	var b []byte
	b = binary.BigEndian.AppendUint32(b, nbdReqMagic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, r.cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	b = append(b, payload...)
	if _, err := r.c.Write(b); err != nil {
		t.Fatalf("raw NBD: send request: %v", err)
	}
	if typ == nbdCmdDisc {
		return 0, nil
	}
	var rep struct {
		Magic, Errno uint32
		Cookie       uint64
	}
	if err := binary.Read(r.c, binary.BigEndian, &rep); err != nil {
		t.Fatalf("raw NBD: read reply: %v", err)
	}
	if rep.Magic != nbdSimpleReply || rep.Cookie != r.cookie {
		t.Fatalf("raw NBD: bad reply %+v (cookie %d)", rep, r.cookie)
	}
	var data []byte
	if typ == nbdCmdRead && rep.Errno == 0 {
		data = make([]byte, length)
		if _, err := io.ReadFull(r.c, data); err != nil {
			t.Fatalf("raw NBD: read data: %v", err)
		}
	}
	return rep.Errno, data
}

func (r *rawNBD) close(t *testing.T) {
	r.request(t, nbdCmdDisc, 0, 0, nil)
	r.c.Close()
}

// TestReadOnlyAlongsideWriter serves a volume read-only from one process
// while another serves it read-write: reads work on the read-only one,
// every kind of write is refused (by qemu-io itself, and by the server
// with EPERM for a client that sends one anyway), and the writer goes on
// undisturbed.
func TestReadOnlyAlongsideWriter(t *testing.T) {
	const m = 1 << 20
	vol := volURL(filePool(t), "ro")
	a := startServe(t, vol, "--create", "--size", "64M")
	qemuIO(t, a.URI("ro"), nil, "write -P 0x42 0 1M", "flush")

	b := startServe(t, "--read-only", vol)
	uri := b.URI("ro")
	if e := nbdinfo(t, uri).Exports[0]; e["is_read_only"] != true {
		t.Errorf("read-only serve: is_read_only = %v", e["is_read_only"])
	}
	qemuIO(t, uri, []string{"-r"}, "read -P 0x42 0 1M", fmt.Sprintf("read -P 0 %d %d", 1*m, 1*m))
	img := copyOut(t, uri)
	if got, want := fileSHA(t, img), fileSHAOf(append(bytes.Repeat([]byte{0x42}, m), make([]byte, 63*m)...)); got != want {
		t.Error("nbdcopy from the read-only serve differs from what the writer flushed")
	}

	// qemu-io refuses to open it read-write, and to write when read-only.
	r := run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x13 0 4k", uri)
	if r.code == 0 || !strings.Contains(r.output(), "Permission denied") {
		t.Errorf("qemu-io write on the read-only export: want a permission error:\n%s", r)
	}
	r = run(t, "qemu-io", "-f", "raw", "-r", "-c", "write -P 0x13 0 4k", uri)
	if r.code == 0 || !strings.Contains(r.output(), "read-only") {
		t.Errorf("qemu-io -r write: want a read-only error:\n%s", r)
	}

	// A client that writes anyway gets EPERM from the server.
	raw := dialRawNBD(t, b.Socket, "ro")
	if raw.tflags&nbdFlagRO == 0 || raw.size != 64*m {
		t.Errorf("raw NBD: size %d, flags %#x; want 64 MiB, read-only", raw.size, raw.tflags)
	}
	if errno, _ := raw.request(t, nbdCmdWrite, 0, 4096, bytes.Repeat([]byte{0x13}, 4096)); errno != nbdEPERM {
		t.Errorf("write to the read-only export: error %d, want EPERM (%d)", errno, nbdEPERM)
	}
	// The connection survives the refusal and still reads the old data.
	if errno, data := raw.request(t, nbdCmdRead, 0, 4096, nil); errno != 0 || !bytes.Equal(data, bytes.Repeat([]byte{0x42}, 4096)) {
		t.Errorf("read after the refused write: error %d, data changed: %v", errno, errno == 0 && data[0] != 0x42)
	}
	raw.close(t)

	// The raw client can write to the read-write serve (a control for the
	// EPERM above).
	rawA := dialRawNBD(t, a.Socket, "ro")
	if errno, _ := rawA.request(t, nbdCmdWrite, 2*m, 4096, bytes.Repeat([]byte{0x99}, 4096)); errno != 0 {
		t.Errorf("raw write to the read-write serve: error %d", errno)
	}
	rawA.close(t)

	// The writer is undisturbed: it writes, flushes and reads.
	qemuIO(t, a.URI("ro"), nil, "write -P 0x43 1M 1M", "flush", "read -P 0x42 0 1M", "read -P 0x43 1M 1M", "read -P 0x99 2M 4k")
	for _, s := range []*server{a, b} {
		if strings.Contains(s.Stderr(), "FENCED") {
			t.Errorf("a serve was fenced:\n%s", s.Stderr())
		}
	}
	b.StopOK()
	a.StopOK()

	c := startServe(t, "--read-only", vol)
	qemuIO(t, c.URI("ro"), []string{"-r"}, "read -P 0x42 0 1M", "read -P 0x43 1M 1M", "read -P 0x99 2M 4k", "read -P 0 3M 1M")
	c.StopOK()
}
