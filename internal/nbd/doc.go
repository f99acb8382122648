// Package nbd serves blockdev.Device values to NBD clients (qemu, qemu-img,
// nbdinfo, nbdcopy, nbdfuse, fio's nbd engine, the Linux nbd client).
//
// # Use
//
//	srv, err := nbd.NewServer(nbd.Options{
//		Exports: map[string]nbd.Export{"vol1": {Device: dev, Description: "volume 1"}},
//		Logger:  logger,
//	})
//	ln, err := nbd.Listen("unix:/run/urldisk/vol1.sock")
//	uri, _ := nbd.URI(ln.Addr(), "vol1", false) // nbd+unix:///vol1?socket=/run/urldisk/vol1.sock
//	go srv.Serve(ctx, ln)
//	...
//	err = srv.Shutdown(ctx) // graceful: in-flight requests are answered first
//
// The caller owns the devices: the server never closes them, and a device
// must stay usable until Shutdown (or RemoveExport for that export) returns.
//
// # Protocol subset
//
// Handshake: fixed newstyle only, advertising NBD_FLAG_FIXED_NEWSTYLE and
// NBD_FLAG_NO_ZEROES; unknown client flags close the connection. The whole
// handshake must finish within Options.HandshakeTimeout. Options:
//
//   - NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO: replies carry
//     NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE (minimum 1, preferred the
//     device's block size clamped to at least 512, maximum
//     Options.MaxPayload), NBD_INFO_NAME when asked for or when the default
//     name "" was resolved, NBD_INFO_DESCRIPTION when asked for. "" means
//     the only served export when there is exactly one.
//   - NBD_OPT_LIST: the served exports with their descriptions.
//   - NBD_OPT_ABORT.
//   - NBD_OPT_STARTTLS when Options.TLSConfig is set; with
//     Options.RequireTLS every other option except NBD_OPT_ABORT is refused
//     with NBD_REP_ERR_TLS_REQD until TLS is up.
//   - NBD_OPT_STRUCTURED_REPLY and all other options: NBD_REP_ERR_UNSUP.
//     Only simple replies are used; there is no block status.
//
// Option data above 64 KiB closes the connection. Unknown or disallowed
// export names get NBD_REP_ERR_UNKNOWN (NBD_OPT_EXPORT_NAME, which cannot
// carry an error, closes the connection).
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, CAN_MULTI_CONN, and
// SEND_TRIM and SEND_WRITE_ZEROES for writable devices or READ_ONLY for
// read-only ones. CAN_MULTI_CONN relies on the blockdev.Device contract that
// Flush covers every write completed before it, on any connection.
//
// Commands: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC. NBD_CMD_FLAG_FUA
// (accepted on every command) makes a write-type command flush the device
// before its reply; NBD_CMD_FLAG_NO_HOLE is accepted on WRITE_ZEROES and
// ignored (urldisk stores zeroes as holes anyway). Any other flag gets
// EINVAL. A FLUSH is executed only after every write-type request received
// before it on the same connection has completed, and its reply follows
// theirs.
//
// Requests run concurrently: up to Options.MaxInFlight per connection,
// answered in completion order, with at most Options.MaxBufferBytes of
// payload buffers held per connection and Options.MaxQueuedBytes over all
// connections (a connection over it stops reading requests until buffers
// are released). A reply write blocked for Options.ReplyTimeout (the client
// does not read) closes the connection. Serve keeps at most
// Options.MaxConns connections open and closes further ones at accept.
//
// An export whose device fails a call with blockdev.ErrFenced is marked
// fenced (also by Server.MarkFenced): NBD_OPT_GO and NBD_OPT_INFO for it
// get NBD_REP_ERR_SHUTDOWN, NBD_OPT_EXPORT_NAME a closed connection, and
// Options.OnFenced is called once. A client that waits for each reply
// before sending its next request has its small requests executed by the
// connection's reader without a hand-off to a worker, unless a device call
// turns out slow (see session.go).
//
// # Errors and malformed input
//
// Device errors map to NBD errors: blockdev.ErrFenced to ESHUTDOWN,
// ErrReadOnly to EPERM, ErrOutOfRange to EINVAL, ErrNoSpace to ENOSPC, any
// other to EIO. The first error of each kind on a connection is logged with
// its details, the rest are counted and summarized when it closes.
//
// Requests are validated before any device call, so the device never sees
// an out-of-range request:
//
//   - offset+length beyond the export, READ longer than MaxPayload, or an
//     unsupported flag: EINVAL (a WRITE's payload is read and discarded
//     first, so the connection stays usable);
//   - WRITE, TRIM or WRITE_ZEROES on a read-only export: EPERM;
//   - WRITE longer than MaxPayload: EINVAL, then the connection is closed
//     without reading the payload (we advertise MaxPayload as the maximum
//     block size, and the protocol allows a hard disconnect for payloads
//     deemed too large rather than reading an unbounded amount);
//   - NBD_CMD_CACHE and NBD_CMD_BLOCK_STATUS (not advertised): EINVAL;
//   - an unknown command: EINVAL; if its length is non-zero it might have
//     carried a payload of unknown size, so the connection is then closed;
//   - a bad request magic, or EOF in the middle of a request: the
//     connection is closed after the requests in flight are answered.
package nbd
