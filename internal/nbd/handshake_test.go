package nbd

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

func TestHandshakeGo(t *testing.T) {
	opts, _ := ramExport(10<<20+123, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	ei := c.connect("disk")
	if ei.size != 10<<20+123 {
		t.Errorf("size %d", ei.size)
	}
	want := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagCanMultiConn)
	if ei.flags != want {
		t.Errorf("flags %#x, want %#x", ei.flags, want)
	}
	if ei.minBlock != 1 || ei.prefBlock != 4096 || ei.maxBlock != DefaultMaxPayload {
		t.Errorf("block sizes %d/%d/%d", ei.minBlock, ei.prefBlock, ei.maxBlock)
	}
	if ei.name != "disk" || ei.description != "test disk" {
		t.Errorf("name %q description %q", ei.name, ei.description)
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
}

func TestHandshakeInfoThenGo(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	if ei, typ := c.info(optInfo, "disk"); typ != repAck || ei.size != 1<<20 {
		t.Fatalf("NBD_OPT_INFO: %#x %+v", typ, ei)
	}
	if _, typ := c.info(optGo, "disk"); typ != repAck {
		t.Fatalf("NBD_OPT_GO: %#x", typ)
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
}

func TestHandshakeDefaultExport(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	srv := newTestServer(t, opts)
	c, _ := pipeConn(t, srv)
	ei := c.connect("")
	if ei.name != "disk" || ei.size != 1<<20 {
		t.Errorf("default export resolved to %q size %d", ei.name, ei.size)
	}

	// With two exports, "" is ambiguous.
	opts.Exports["other"] = Export{Device: nbdtest.NewRAMDisk(4096, 512, false)}
	srv2 := newTestServer(t, opts)
	c2, _ := pipeConn(t, srv2)
	c2.greet(flagCFixedNewstyle)
	if _, typ := c2.info(optGo, ""); typ != repErrUnknown {
		t.Errorf("NBD_OPT_GO \"\" with two exports: %#x, want NBD_REP_ERR_UNKNOWN", typ)
	}
}

func TestHandshakeExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		opts, _ := ramExport(5000, true)
		srv := newTestServer(t, opts)
		c, done := pipeConn(t, srv)
		flags := uint32(flagCFixedNewstyle)
		if noZeroes {
			flags |= flagCNoZeroes
		}
		c.greet(flags)
		c.sendOption(optExportName, []byte("disk"))
		b := c.readFull(10)
		if size := binary.BigEndian.Uint64(b); size != 5000 {
			t.Errorf("size %d", size)
		}
		if f := binary.BigEndian.Uint16(b[8:]); f&tflagReadOnly == 0 || f&tflagSendTrim != 0 {
			t.Errorf("read-only export flags %#x", f)
		}
		if !noZeroes {
			if z := c.readFull(exportZeroPadding); strings.Trim(string(z), "\x00") != "" {
				t.Errorf("padding not zero")
			}
		}
		// The next bytes must be replies to requests, not padding.
		if data, errno := c.pread(0, 16); errno != 0 || len(data) != 16 {
			t.Errorf("read after EXPORT_NAME: errno %d", errno)
		}
		c.disconnect()
		if err := waitDone(t, done); err != nil {
			t.Errorf("ServeConn: %v", err)
		}
	}
}

func TestHandshakeBadClientFlags(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(1 << 5)
	c.expectClosed()
	if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "client flags") {
		t.Errorf("ServeConn: %v, want client flags error", err)
	}
}

func TestHandshakeBadOptionMagic(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, 0x1122334455667788)
	b = binary.BigEndian.AppendUint32(b, optList)
	c.write(binary.BigEndian.AppendUint32(b, 0))
	c.expectClosed()
	if err := waitDone(t, done); !errors.Is(err, errBadOptionMagic) {
		t.Errorf("ServeConn: %v, want errBadOptionMagic", err)
	}
}

func TestHandshakeOversizeOption(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, optGo)
	c.write(binary.BigEndian.AppendUint32(b, maxOptionLength+1))
	c.expectClosed()
	if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("ServeConn: %v, want oversize option error", err)
	}
}

func TestHandshakeUnknownAndRefusedOptions(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	for _, tc := range []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{99, []byte("some data"), repErrUnsup},
		{optStructuredReply, nil, repErrUnsup},
		{10, nil, repErrUnsup}, // NBD_OPT_SET_META_CONTEXT
		{optStartTLS, nil, repErrPolicy},
		{optList, []byte("x"), repErrInvalid},
		{optInfo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid},
		{optGo, infoData("nope"), repErrUnknown},
		{optInfo, append(infoData("disk"), 0), repErrInvalid}, // trailing byte
	} {
		c.sendOption(tc.opt, tc.data)
		r := c.readOptReply()
		if r.opt != tc.opt || r.typ != tc.want {
			t.Errorf("option %d: reply %d/%#x, want %#x", tc.opt, r.opt, r.typ, tc.want)
		}
	}
	// The connection is still usable.
	if _, typ := c.info(optGo, "disk"); typ != repAck {
		t.Fatalf("NBD_OPT_GO after errors: %#x", typ)
	}
	c.disconnect()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
}

func TestHandshakeUnknownExportName(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	c.sendOption(optExportName, []byte("nope"))
	c.expectClosed()
	if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "unknown export") {
		t.Errorf("ServeConn: %v, want unknown export error", err)
	}
}

func TestHandshakeListAndAllowList(t *testing.T) {
	d := nbdtest.NewRAMDisk(4096, 512, false)
	srv := newTestServer(t, Options{
		Exports: map[string]Export{
			"b":      {Device: d, Description: "bee"},
			"a":      {Device: d},
			"secret": {Device: d},
		},
		Allow: []string{"a", "b", "absent"},
	})
	c, _ := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	c.sendOption(optList, nil)
	var got []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("list reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"="+string(r.data[4+n:]))
	}
	if strings.Join(got, ",") != "a=,b=bee" {
		t.Errorf("list %q", got)
	}
	for _, name := range []string{"secret", "absent"} {
		if _, typ := c.info(optInfo, name); typ != repErrUnknown {
			t.Errorf("info %q: %#x, want NBD_REP_ERR_UNKNOWN", name, typ)
		}
	}
	if _, typ := c.info(optInfo, "a"); typ != repAck {
		t.Errorf("info a: %#x", typ)
	}
}

func TestHandshakeAbort(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	c.sendOption(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Errorf("abort reply %#x", r.typ)
	}
	c.expectClosed()
	if err := waitDone(t, done); err != nil {
		t.Errorf("ServeConn after abort: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	opts, _ := ramExport(4096, false)
	opts.HandshakeTimeout = 100 * time.Millisecond
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.readFull(18) // greeting; then the client says nothing
	c.expectClosed()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after a handshake timeout")
	}
}

func TestHandshakeDisconnectMidOption(t *testing.T) {
	opts, _ := ramExport(4096, false)
	srv := newTestServer(t, opts)
	c, done := pipeConn(t, srv)
	c.greet(flagCFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, 100)
	c.write(append(b, "partial"...))
	c.nc.Close()
	if err := waitDone(t, done); err == nil {
		t.Error("ServeConn: nil error after disconnect mid-option")
	}
}
