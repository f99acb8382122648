package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// handshake is the state of option haggling on one connection.
type handshake struct {
	c        *conn
	nc       net.Conn // raw socket, or the *tls.Conn after STARTTLS
	r        *bufio.Reader
	w        *bufio.Writer
	tls      bool // TLS is up
	fixed    bool // client set NBD_FLAG_C_FIXED_NEWSTYLE
	noZeroes bool // client set NBD_FLAG_C_NO_ZEROES
	buf      []byte
}

// run performs the fixed newstyle handshake and returns the export chosen by
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME, after its reply has been sent.
func (h *handshake) run() (*exportEntry, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:8], magicInit)
	binary.BigEndian.PutUint64(hello[8:16], magicOpts)
	binary.BigEndian.PutUint16(hello[16:18], serverHandshake)
	if _, err := h.w.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	if err := h.w.Flush(); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}

	var cf [4]byte
	if _, err := io.ReadFull(h.r, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientFlagsKnown != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	h.fixed = flags&flagCFixedNewstyle != 0
	h.noZeroes = flags&flagCNoZeroes != 0
	if h.c.srv.opts.RequireTLS && !h.fixed {
		return nil, errors.New("TLS required but client does not speak fixed newstyle")
	}

	var hdr [optionHeaderLen]byte
	for {
		if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				// Between options, like NBD_OPT_ABORT without the
				// courtesy: clients do this after an error reply.
				return nil, errClientGone
			}
			return nil, fmt.Errorf("read option: %w", err)
		}
		oh, err := parseOptionHeader(hdr[:])
		if err != nil {
			return nil, err
		}
		if oh.Length > maxOptionLength {
			return nil, fmt.Errorf("option %d data of %d bytes exceeds %d", oh.Option, oh.Length, maxOptionLength)
		}
		data := make([]byte, oh.Length)
		if _, err := io.ReadFull(h.r, data); err != nil {
			return nil, fmt.Errorf("read option %d data: %w", oh.Option, err)
		}
		e, err := h.option(oh.Option, data)
		if err != nil || e != nil {
			return e, err
		}
	}
}

// option handles one option. It returns a non-nil export to enter the
// transmission phase, or an error to end the connection.
func (h *handshake) option(opt uint32, data []byte) (*exportEntry, error) {
	srv := h.c.srv
	if srv.opts.RequireTLS && !h.tls {
		switch opt {
		case optStartTLS, optAbort:
		case optExportName:
			// This option cannot return an error: hang up.
			return nil, errors.New("NBD_OPT_EXPORT_NAME before the required TLS")
		default:
			return nil, h.reply(opt, repErrTLSReqd, "TLS is required")
		}
	}

	switch opt {
	case optExportName:
		name := string(data)
		e, ok := srv.lookup(name)
		if checkName(name) != nil || !ok {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", name)
		}
		if e.fenced.Load() {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME %q: %w", name, errExportFenced)
		}
		return e, h.sendExportName(e)

	case optAbort:
		// Best effort: the client may already have gone.
		h.reply(opt, repAck, "")
		return nil, errAbort

	case optList:
		if len(data) != 0 {
			return nil, h.reply(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, e := range srv.listExports() {
			d := binary.BigEndian.AppendUint32(nil, uint32(len(e.name)))
			d = append(d, e.name...)
			d = append(d, e.Description...)
			h.buf = appendOptReply(h.buf[:0], opt, repServer, d)
			if _, err := h.w.Write(h.buf); err != nil {
				return nil, fmt.Errorf("send export list: %w", err)
			}
		}
		return nil, h.reply(opt, repAck, "")

	case optStartTLS:
		return nil, h.startTLS(data)

	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			return nil, h.reply(opt, repErrInvalid, err.Error())
		}
		e, ok := srv.lookup(req.Name)
		if !ok {
			return nil, h.reply(opt, repErrUnknown, "unknown export")
		}
		if e.fenced.Load() {
			// NBD_REP_ERR_SHUTDOWN: this export will not come back here.
			return nil, h.reply(opt, repErrShutdown, fmt.Sprintf("export %q is fenced: another writer took over its volume", e.name))
		}
		if err := h.sendInfo(opt, req, e); err != nil {
			return nil, err
		}
		if opt == optGo {
			return e, nil
		}
		return nil, nil

	case optStructuredReply:
		return nil, h.reply(opt, repErrUnsup, "structured replies are not supported")

	default:
		return nil, h.reply(opt, repErrUnsup, "option not supported")
	}
}

// reply sends an option reply with an optional message (error replies carry
// a human-readable string) and flushes.
func (h *handshake) reply(opt, typ uint32, msg string) error {
	h.buf = appendOptReply(h.buf[:0], opt, typ, []byte(msg))
	if _, err := h.w.Write(h.buf); err != nil {
		return fmt.Errorf("send option %d reply: %w", opt, err)
	}
	if err := h.w.Flush(); err != nil {
		return fmt.Errorf("send option %d reply: %w", opt, err)
	}
	return nil
}

// sendExportName answers NBD_OPT_EXPORT_NAME: size, flags, and (unless the
// client set NO_ZEROES) 124 bytes of zeroes.
func (h *handshake) sendExportName(e *exportEntry) error {
	b := make([]byte, 10, 10+exportZeroPadding)
	binary.BigEndian.PutUint64(b[0:8], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(b[8:10], transmissionFlags(e.Device.ReadOnly()))
	if !h.noZeroes {
		b = b[:10+exportZeroPadding]
	}
	if _, err := h.w.Write(b); err != nil {
		return fmt.Errorf("send export info: %w", err)
	}
	if err := h.w.Flush(); err != nil {
		return fmt.Errorf("send export info: %w", err)
	}
	return nil
}

// sendInfo answers NBD_OPT_INFO / NBD_OPT_GO for export e with
// NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME and
// NBD_INFO_DESCRIPTION (the latter two when asked for, or when the name was
// resolved from the default ""), then NBD_REP_ACK.
func (h *handshake) sendInfo(opt uint32, req infoRequest, e *exportEntry) error {
	dev := e.Device
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(dev.Size()))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(dev.ReadOnly()))
	h.buf = appendOptReply(h.buf[:0], opt, repInfo, info)

	minimum, preferred, maximum := blockSizes(dev.BlockSize(), uint32(h.c.srv.opts.MaxPayload))
	info = binary.BigEndian.AppendUint16(info[:0], infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, minimum)
	info = binary.BigEndian.AppendUint32(info, preferred)
	info = binary.BigEndian.AppendUint32(info, maximum)
	h.buf = appendOptReply(h.buf, opt, repInfo, info)

	if req.wants(infoName) || req.Name != e.name {
		info = binary.BigEndian.AppendUint16(info[:0], infoName)
		info = append(info, e.name...)
		h.buf = appendOptReply(h.buf, opt, repInfo, info)
	}
	if req.wants(infoDescription) && e.Description != "" {
		info = binary.BigEndian.AppendUint16(info[:0], infoDescription)
		info = append(info, e.Description...)
		h.buf = appendOptReply(h.buf, opt, repInfo, info)
	}
	h.buf = appendOptReply(h.buf, opt, repAck)
	if _, err := h.w.Write(h.buf); err != nil {
		return fmt.Errorf("send export info: %w", err)
	}
	if err := h.w.Flush(); err != nil {
		return fmt.Errorf("send export info: %w", err)
	}
	return nil
}

// startTLS handles NBD_OPT_STARTTLS: on success the connection continues
// option haggling over TLS.
func (h *handshake) startTLS(data []byte) error {
	cfg := h.c.srv.opts.TLSConfig
	switch {
	case len(data) != 0:
		return h.reply(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case h.tls:
		return h.reply(optStartTLS, repErrInvalid, "TLS is already active")
	case cfg == nil:
		return h.reply(optStartTLS, repErrPolicy, "TLS is not configured")
	case !h.fixed:
		return h.reply(optStartTLS, repErrPolicy, "TLS needs fixed newstyle negotiation")
	}
	if err := h.reply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	if h.r.Buffered() != 0 {
		// The client must wait for our ACK before the TLS handshake; bytes
		// sent before it would be plaintext injected into the session.
		return errors.New("client sent data after NBD_OPT_STARTTLS before the reply")
	}
	tc := tls.Server(h.c.raw, cfg)
	if err := tc.HandshakeContext(h.c.ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	h.nc = tc
	h.tls = true
	h.r.Reset(tc)
	h.w.Reset(tc)
	return nil
}
