package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Wire constants from the NBD protocol document
// (NetworkBlockDevice/nbd doc/proto.md). All integers on the wire are
// big-endian.
const (
	magicInit         = 0x4e42444d41474943 // "NBDMAGIC", the INIT_PASSWD
	magicOpts         = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply     = 0x3e889045565a9    // option reply magic
	magicRequest      = 0x25609513         // NBD_REQUEST_MAGIC
	magicSimpleReply  = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	exportZeroPadding = 124                // zeroes after NBD_OPT_EXPORT_NAME reply
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
	clientFlagsKnown   = flagCFixedNewstyle | flagCNoZeroes
	serverHandshake    = flagFixedNewstyle | flagNoZeroes
)

// Transmission flags (16 bits).
const (
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagCanMultiConn    = 1 << 8
)

// Option types.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repErrBit      = 1 << 31
	repErrUnsup    = repErrBit + 1
	repErrPolicy   = repErrBit + 2
	repErrInvalid  = repErrBit + 3
	repErrTLSReqd  = repErrBit + 5
	repErrUnknown  = repErrBit + 6
	repErrShutdown = repErrBit + 7
)

// Information types for NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Command types.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
)

// Error values sent in replies (the protocol fixes these numbers; they are
// not the host's errno values).
const (
	errPerm     = 1
	errIO       = 5
	errInval    = 22
	errNoSpc    = 28
	errShutdown = 108
)

// Sizes of fixed-length messages.
const (
	optionHeaderLen  = 16 // IHAVEOPT, option, length
	requestHeaderLen = 28 // magic, flags, type, handle, offset, length
	simpleReplyLen   = 16 // magic, error, handle
	optReplyHeadLen  = 20 // magic, option, type, length

	// maxOptionLength caps the data of one option. Export names are at most
	// 4096 bytes, so anything larger is a broken or hostile client.
	maxOptionLength = 64 << 10
	// maxNameLength is the protocol's limit on strings such as export names.
	maxNameLength = 4096
)

// Parse errors. They are protocol violations: the connection is closed.
var (
	errBadOptionMagic  = errors.New("bad option magic")
	errBadRequestMagic = errors.New("bad request magic")
	errShortMessage    = errors.New("short message")
)

// optionHeader is the fixed part of a client option during the handshake.
type optionHeader struct {
	Option uint32
	Length uint32 // bytes of option data that follow
}

// parseOptionHeader decodes the 16-byte header of a client option.
func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < optionHeaderLen {
		return optionHeader{}, errShortMessage
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != magicOpts {
		return optionHeader{}, fmt.Errorf("%w %#x", errBadOptionMagic, m)
	}
	return optionHeader{
		Option: binary.BigEndian.Uint32(b[8:12]),
		Length: binary.BigEndian.Uint32(b[12:16]),
	}, nil
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	Name  string
	Infos []uint16 // requested NBD_INFO_* types, possibly empty
}

// wants reports whether the client asked for information type t.
func (r infoRequest) wants(t uint16) bool {
	for _, x := range r.Infos {
		if x == t {
			return true
		}
	}
	return false
}

// parseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO:
// 32-bit name length, name, 16-bit count, count 16-bit info types.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, fmt.Errorf("info request of %d bytes is too short", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data)-6) {
		return infoRequest{}, fmt.Errorf("info request name length %d exceeds data", nameLen)
	}
	name := data[4 : 4+nameLen]
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("info request lists %d items in %d bytes", n, len(rest))
	}
	if err := checkName(string(name)); err != nil {
		return infoRequest{}, err
	}
	r := infoRequest{Name: string(name)}
	if n > 0 {
		r.Infos = make([]uint16, n)
		for i := range r.Infos {
			r.Infos[i] = binary.BigEndian.Uint16(rest[2*i:])
		}
	}
	return r, nil
}

// checkName validates an export name against the protocol's string rules.
func checkName(name string) error {
	if len(name) > maxNameLength {
		return fmt.Errorf("export name of %d bytes is longer than %d", len(name), maxNameLength)
	}
	if !utf8.ValidString(name) {
		return errors.New("export name is not valid UTF-8")
	}
	for i := 0; i < len(name); i++ {
		if name[i] == 0 {
			return errors.New("export name contains NUL")
		}
	}
	return nil
}

// appendOptReply appends an option reply (header and data) to dst.
func appendOptReply(dst []byte, opt, typ uint32, data ...[]byte) []byte {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	dst = binary.BigEndian.AppendUint64(dst, magicOptReply)
	dst = binary.BigEndian.AppendUint32(dst, opt)
	dst = binary.BigEndian.AppendUint32(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	for _, d := range data {
		dst = append(dst, d...)
	}
	return dst
}

// request is a decoded transmission-phase request header.
type request struct {
	Flags  uint16
	Type   uint16
	Handle uint64
	Offset uint64
	Length uint32
}

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHeaderLen {
		return request{}, errShortMessage
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("%w %#x", errBadRequestMagic, m)
	}
	return request{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Handle: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// putSimpleReply encodes a simple reply header into b (len >= 16).
func putSimpleReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// limits are what checkRequest needs to know about the export.
type limits struct {
	Size       int64  // export size in bytes
	MaxPayload uint32 // largest READ/WRITE length accepted
	ReadOnly   bool
}

// verdict is checkRequest's decision about one request.
type verdict struct {
	// Errno, when non-zero, is replied at once without calling the device.
	Errno uint32
	// Payload is the number of bytes following the header (WRITE data) that
	// must be consumed before the next header: read into a buffer when
	// Errno == 0, discarded otherwise. Zero when Hangup is set.
	Payload uint32
	// Hangup: after replying Errno, close the connection, because the
	// stream can no longer be parsed (oversize WRITE, or an unknown command
	// that may carry a payload of unknown length).
	Hangup bool
	// Disconnect: the client sent NBD_CMD_DISC; no reply.
	Disconnect bool
}

// checkRequest decides how to handle a request before any device call: it
// is the single place that validates flags, lengths and ranges, so the
// device is never called with an out-of-range request.
func checkRequest(r request, l limits) verdict {
	inRange := r.Offset <= uint64(l.Size) && uint64(r.Length) <= uint64(l.Size)-r.Offset
	allowed := uint16(cmdFlagFUA) // FUA is accepted (and ignored where moot) on every command
	switch r.Type {
	case cmdDisc:
		return verdict{Disconnect: true}
	case cmdRead:
		switch {
		case r.Flags&^allowed != 0, r.Length > l.MaxPayload, !inRange:
			return verdict{Errno: errInval}
		}
		return verdict{}
	case cmdWrite:
		if r.Length > l.MaxPayload {
			// The payload is larger than any buffer we would allocate; rather
			// than reading and discarding an unbounded amount, hang up.
			return verdict{Errno: errInval, Hangup: true}
		}
		v := verdict{Payload: r.Length}
		switch {
		case r.Flags&^allowed != 0:
			v.Errno = errInval
		case l.ReadOnly:
			v.Errno = errPerm
		case !inRange:
			v.Errno = errInval
		}
		return v
	case cmdFlush:
		if r.Flags&^allowed != 0 {
			return verdict{Errno: errInval}
		}
		return verdict{}
	case cmdTrim, cmdWriteZeroes:
		if r.Type == cmdWriteZeroes {
			allowed |= cmdFlagNoHole
		}
		switch {
		case r.Flags&^allowed != 0:
			return verdict{Errno: errInval}
		case l.ReadOnly:
			return verdict{Errno: errPerm}
		case !inRange:
			return verdict{Errno: errInval}
		}
		return verdict{}
	case cmdCache, cmdBlockStatus:
		// Known commands without a payload that we do not advertise.
		return verdict{Errno: errInval}
	default:
		// An unknown command might carry a payload; with a zero length the
		// stream is certainly intact, otherwise it cannot be resynchronised.
		return verdict{Errno: errInval, Hangup: r.Length != 0}
	}
}

// isWriteCmd reports whether a command modifies the export (and so must
// complete before a later FLUSH is processed).
func isWriteCmd(t uint16) bool {
	return t == cmdWrite || t == cmdTrim || t == cmdWriteZeroes
}

// blockSizes returns the NBD_INFO_BLOCK_SIZE constraints for a device with
// preferred I/O size devBlock: minimum 1 (any alignment works), preferred a
// power of two in [512, largest power of two <= maxPayload], maximum
// maxPayload.
func blockSizes(devBlock int, maxPayload uint32) (minimum, preferred, maximum uint32) {
	top := uint32(1)
	for top<<1 != 0 && top<<1 <= maxPayload {
		top <<= 1
	}
	preferred = 512
	for preferred<<1 != 0 && int64(preferred)<<1 <= int64(devBlock) {
		preferred <<= 1
	}
	if preferred > top {
		preferred = top
	}
	return 1, preferred, maxPayload
}

// transmissionFlags returns the flags advertised for an export.
func transmissionFlags(readOnly bool) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagCanMultiConn)
	if readOnly {
		return f | tflagReadOnly
	}
	return f | tflagSendTrim | tflagSendWriteZeroes
}
