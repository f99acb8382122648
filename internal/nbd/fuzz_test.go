package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

// fuzzServer returns a server with a writable and a read-only RAM disk, TLS
// available, small limits, and a discarding logger.
func fuzzServer(tb testing.TB) (*Server, *nbdtest.RAMDisk, *nbdtest.RAMDisk) {
	rw := nbdtest.NewRAMDisk(64<<10, 4096, false)
	ro := nbdtest.NewRAMDisk(8<<10, 512, true)
	srv, err := NewServer(Options{
		Exports: map[string]Export{
			"disk": {Device: rw, Description: "fuzz"},
			"ro":   {Device: ro},
		},
		TLSConfig:        newTestPKI(tb).serverConfig(),
		Logger:           slog.New(slog.DiscardHandler),
		MaxPayload:       16 << 10,
		MaxInFlight:      4,
		HandshakeTimeout: 5 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return srv, rw, ro
}

// option encodes a client option.
func option(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// clientFlagsFixed encodes the usual client flags.
func clientFlagsFixed() []byte { return []byte{0, 0, 0, flagCFixedNewstyle | flagCNoZeroes} }

// FuzzHandshake feeds arbitrary bytes as the client side of a whole
// connection: the server must neither panic nor hang, and must never call a
// device out of range.
func FuzzHandshake(f *testing.F) {
	req := func(flags, typ uint16, off uint64, n uint32) []byte {
		return requestBytes(flags, typ, 1, off, n)
	}
	f.Add(cat(clientFlagsFixed(), option(optGo, infoData("disk", infoBlockSize)),
		req(0, cmdWrite, 100, 4), []byte("data"), req(cmdFlagFUA, cmdRead, 0, 512),
		req(0, cmdFlush, 0, 0), req(0, cmdTrim, 0, 4096), req(cmdFlagNoHole, cmdWriteZeroes, 1, 10),
		req(0, cmdDisc, 0, 0)))
	f.Add(cat(clientFlagsFixed(), option(optList, nil), option(optInfo, infoData("ro")), option(optAbort, nil)))
	f.Add(cat([]byte{0, 0, 0, flagCFixedNewstyle}, option(optExportName, []byte("ro")),
		req(0, cmdRead, 0, 100), req(0, cmdWrite, 0, 2), []byte("xy"), req(0, cmdDisc, 0, 0)))
	f.Add(cat(clientFlagsFixed(), option(optStartTLS, nil), []byte("\x16\x03\x01\x00\x05hello")))
	f.Add(cat(clientFlagsFixed(), option(99, []byte("junk")), option(optStructuredReply, nil),
		option(optGo, infoData("")), option(optGo, infoData("disk")), req(0, 77, 0, 5), []byte("12345")))
	f.Add(cat(clientFlagsFixed(), option(optGo, infoData("disk")), req(0, cmdWrite, 0, 1<<20)))
	f.Add(cat(clientFlagsFixed(), option(optGo, infoData("disk")), req(0, cmdRead, 1<<63, 1<<31)))
	f.Add(cat(clientFlagsFixed(), option(optInfo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})))
	f.Add([]byte{0, 0, 0, 0xff})
	f.Add([]byte{})
	srv, rw, ro := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, ss := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), ss) }()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, cs)
			close(drained)
		}()
		cs.SetDeadline(time.Now().Add(testTimeout))
		cs.Write(data) // may fail when the server hangs up early
		cs.Close()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatal("ServeConn hung")
		}
		<-drained
		if rw.Violations() != 0 || ro.Violations() != 0 {
			t.Fatal("device called out of range")
		}
	})
}

// FuzzRequest checks the request parser and validator on arbitrary headers,
// then feeds the bytes as the request stream of an established connection.
func FuzzRequest(f *testing.F) {
	f.Add(cat(requestBytes(0, cmdWrite, 1, 0, 4), []byte("abcd"), requestBytes(0, cmdRead, 2, 0, 4),
		requestBytes(0, cmdFlush, 3, 0, 0), requestBytes(0, cmdDisc, 0, 0, 0)))
	f.Add(requestBytes(cmdFlagFUA, cmdWrite, 1, 64<<10-1, 1))
	f.Add(requestBytes(0, cmdWrite, 1, 0, 1<<30))
	f.Add(requestBytes(0, cmdRead, 1, 1<<64-1, 1))
	f.Add(requestBytes(cmdFlagNoHole, cmdWriteZeroes, 1, 100, 1<<20))
	f.Add(requestBytes(0xffff, cmdTrim, 1, 0, 10))
	f.Add(cat(requestBytes(0, 42, 1, 0, 0), requestBytes(0, 42, 1, 0, 9), []byte("123456789")))
	f.Add(cat(requestBytes(0, cmdBlockStatus, 1, 0, 512), requestBytes(0, cmdCache, 1, 0, 512)))
	f.Add([]byte("\x25\x60\x95\x14not the request magic......."))
	f.Add(requestBytes(0, cmdWrite, 1, 0, 100)[:20])
	srv, rw, _ := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		// The pure layer.
		if r, err := parseRequest(data); err == nil {
			for _, l := range []limits{
				{Size: 64 << 10, MaxPayload: 16 << 10},
				{Size: 0, MaxPayload: 4096, ReadOnly: true},
				{Size: 1<<63 - 1, MaxPayload: 1 << 30},
			} {
				checkVerdict(t, r, l, checkRequest(r, l))
			}
		}
		if _, err := parseOptionHeader(data); err == nil && len(data) < optionHeaderLen {
			t.Fatal("option header parsed from short input")
		}
		if ir, err := parseInfoRequest(data); err == nil {
			if 4+len(ir.Name)+2+2*len(ir.Infos) != len(data) {
				t.Fatalf("info request %+v does not account for %d bytes", ir, len(data))
			}
		}

		// The same bytes as a request stream.
		c, done := pipeConn(t, srv)
		c.connect("disk")
		go io.Copy(io.Discard, c.nc)
		c.nc.Write(data)
		c.nc.Close()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatal("ServeConn hung")
		}
		if rw.Violations() != 0 {
			t.Fatal("device called out of range")
		}
	})
}

// checkVerdict asserts the invariants of checkRequest.
func checkVerdict(t *testing.T, r request, l limits, v verdict) {
	t.Helper()
	end := r.Offset + uint64(r.Length)
	inRange := end >= r.Offset && end <= uint64(l.Size)
	switch {
	case v.Disconnect:
		if r.Type != cmdDisc || v.Errno != 0 {
			t.Fatalf("disconnect verdict for %+v", r)
		}
		return
	case v.Hangup && v.Errno == 0:
		t.Fatalf("hangup without an error for %+v", r)
	case v.Payload != 0 && (r.Type != cmdWrite || v.Payload != r.Length || v.Hangup):
		t.Fatalf("payload %d for %+v", v.Payload, r)
	case r.Type == cmdWrite && !v.Hangup && v.Payload != r.Length:
		t.Fatalf("write payload %d not consumed for %+v", r.Length, r)
	}
	if v.Errno != 0 {
		return
	}
	// Accepted: the device may be called, so everything must be valid.
	switch r.Type {
	case cmdRead, cmdWrite:
		if r.Length > l.MaxPayload {
			t.Fatalf("accepted oversize %+v", r)
		}
		fallthrough
	case cmdTrim, cmdWriteZeroes:
		if !inRange {
			t.Fatalf("accepted out-of-range %+v (size %d)", r, l.Size)
		}
		if r.Type != cmdRead && l.ReadOnly {
			t.Fatalf("accepted write-type %+v on a read-only export", r)
		}
	case cmdFlush:
	default:
		t.Fatalf("accepted unsupported command %+v", r)
	}
	allowed := uint16(cmdFlagFUA)
	if r.Type == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	if r.Flags&^allowed != 0 {
		t.Fatalf("accepted unknown flags in %+v", r)
	}
}
