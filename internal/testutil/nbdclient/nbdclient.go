// Package nbdclient is a minimal NBD client for tests and test helper
// programs: it connects to an nbd+unix:// URI (fixed newstyle handshake,
// NBD_OPT_GO) and issues one request at a time (READ, WRITE, FLUSH) with
// simple replies. It exists so helper workloads can use a urldisk export
// without external tools.
package nbdclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"
)

// Protocol constants (see the NBD protocol document).
const (
	magicInit        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpts        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply    = 0x3e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optGo      = 7
	repAck     = 1
	repInfo    = 3
	repErrBit  = 1 << 31
	infoExport = 0

	cmdRead  = 0
	cmdWrite = 1
	cmdDisc  = 2
	cmdFlush = 3
)

// Error is an NBD error reply (errno from the server).
type Error struct {
	Op    string
	Errno uint32
}

func (e *Error) Error() string { return fmt.Sprintf("nbd %s: server error %d", e.Op, e.Errno) }

// Conn is a connected export. Not safe for concurrent use.
type Conn struct {
	c      net.Conn
	size   uint64
	handle uint64
}

// ParseURI splits nbd+unix:///NAME?socket=PATH into the socket path and
// the export name.
func ParseURI(uri string) (socket, name string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("nbd uri %q: %w", uri, err)
	}
	if u.Scheme != "nbd+unix" {
		return "", "", fmt.Errorf("nbd uri %q: only nbd+unix:// is supported", uri)
	}
	socket = u.Query().Get("socket")
	if socket == "" {
		return "", "", fmt.Errorf("nbd uri %q: no socket= parameter", uri)
	}
	if len(u.Path) > 0 {
		name = u.Path[1:]
	}
	return socket, name, nil
}

// Dial connects to uri and negotiates the export with NBD_OPT_GO.
func Dial(uri string, timeout time.Duration) (*Conn, error) {
	socket, name, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return nil, fmt.Errorf("nbd connect: %w", err)
	}
	c.SetDeadline(time.Now().Add(timeout))
	cn := &Conn{c: c}
	if err := cn.handshake(name); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return cn, nil
}

func (cn *Conn) handshake(name string) error {
	var hello [18]byte
	if _, err := io.ReadFull(cn.c, hello[:]); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOpts {
		return errors.New("nbd handshake: not a newstyle NBD server")
	}
	if binary.BigEndian.Uint16(hello[16:])&flagFixedNewstyle == 0 {
		return errors.New("nbd handshake: server is not fixed newstyle")
	}
	var cf [4]byte
	binary.BigEndian.PutUint32(cf[:], flagFixedNewstyle|flagNoZeroes)
	// NBD_OPT_GO: name length, name, zero info requests.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	opt := binary.BigEndian.AppendUint64(cf[:], magicOpts)
	opt = binary.BigEndian.AppendUint32(opt, optGo)
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(data)))
	opt = append(opt, data...)
	if _, err := cn.c.Write(opt); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(cn.c, h[:]); err != nil {
			return fmt.Errorf("nbd handshake: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
			return errors.New("nbd handshake: bad option reply magic")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > 1<<20 {
			return fmt.Errorf("nbd handshake: option reply of %d bytes", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(cn.c, body); err != nil {
			return fmt.Errorf("nbd handshake: %w", err)
		}
		switch {
		case typ&repErrBit != 0:
			return fmt.Errorf("nbd handshake: export %q refused (reply %#x): %s", name, typ, body)
		case typ == repInfo && len(body) >= 12 && binary.BigEndian.Uint16(body) == infoExport:
			cn.size = binary.BigEndian.Uint64(body[2:])
		case typ == repAck:
			return nil
		}
	}
}

// Size is the export's size in bytes.
func (cn *Conn) Size() uint64 { return cn.size }

// header appends a request header with the next handle to b.
func (cn *Conn) header(b []byte, cmd uint16, off uint64, length uint32) []byte {
	cn.handle++
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, 0) // flags
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint64(b, cn.handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// SendReads sends n READs of length bytes each (from offset 0) at once and
// reads no reply, as a client that stalls the server's replies does. The
// connection is good only for Close afterwards.
func (cn *Conn) SendReads(n int, length uint32) error {
	var b []byte
	for range n {
		b = cn.header(b, cmdRead, 0, length)
	}
	if _, err := cn.c.Write(b); err != nil {
		return fmt.Errorf("nbd send reads: %w", err)
	}
	return nil
}

func (cn *Conn) request(op string, cmd uint16, off uint64, length uint32, payload []byte, into []byte) error {
	req := append(cn.header(nil, cmd, off, length), payload...)
	if _, err := cn.c.Write(req); err != nil {
		return fmt.Errorf("nbd %s: %w", op, err)
	}
	if cmd == cmdDisc {
		return nil
	}
	var rep [16]byte
	if _, err := io.ReadFull(cn.c, rep[:]); err != nil {
		return fmt.Errorf("nbd %s: %w", op, err)
	}
	if binary.BigEndian.Uint32(rep[0:]) != magicSimpleReply || binary.BigEndian.Uint64(rep[8:]) != cn.handle {
		return fmt.Errorf("nbd %s: bad reply", op)
	}
	if errno := binary.BigEndian.Uint32(rep[4:]); errno != 0 {
		return &Error{Op: op, Errno: errno}
	}
	if into != nil {
		if _, err := io.ReadFull(cn.c, into); err != nil {
			return fmt.Errorf("nbd %s: %w", op, err)
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off.
func (cn *Conn) ReadAt(p []byte, off int64) error {
	return cn.request("read", cmdRead, uint64(off), uint32(len(p)), nil, p)
}

// WriteAt writes p at off.
func (cn *Conn) WriteAt(p []byte, off int64) error {
	return cn.request("write", cmdWrite, uint64(off), uint32(len(p)), p, nil)
}

// Flush makes every acknowledged write durable.
func (cn *Conn) Flush() error { return cn.request("flush", cmdFlush, 0, 0, nil, nil) }

// FlushWithin flushes and returns how long it took, or an error once d
// has passed without an answer (a stalled flush would otherwise hang the
// caller; the connection is then good only for Close).
func (cn *Conn) FlushWithin(d time.Duration) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cn.Flush() }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(d):
		return d, fmt.Errorf("nbd flush: no answer after %s", d)
	}
}

// Close disconnects (NBD_CMD_DISC) and closes the socket.
func (cn *Conn) Close() error {
	cn.request("disconnect", cmdDisc, 0, 0, nil, nil)
	return cn.c.Close()
}
