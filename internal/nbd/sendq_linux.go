package nbd

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sendQueue reports whether the peer has read everything written to a
// socket: for a unix socket, TIOCOUTQ (SIOCOUTQ) counts the bytes written
// and not yet read by the peer; for TCP, the bytes not yet acknowledged.
type sendQueue struct {
	rc    syscall.RawConn // nil: unknown, never empty
	query func(fd uintptr)
	n     int
	err   error
}

func (q *sendQueue) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	q.rc = rc
	q.query = func(fd uintptr) { q.n, q.err = unix.IoctlGetInt(int(fd), unix.TIOCOUTQ) }
}

// empty reports whether the peer has consumed all data sent (false if
// unknown). Only one goroutine may call it at a time.
func (q *sendQueue) empty() bool {
	if q.rc == nil {
		return false
	}
	if err := q.rc.Control(q.query); err != nil || q.err != nil {
		return false
	}
	return q.n == 0
}
