//go:build !linux

package nbd

import "net"

// sendQueue would report whether the peer has read everything written to
// a socket; this platform has no implementation, so inline execution (see
// session) is never used.
type sendQueue struct{}

func (q *sendQueue) init(net.Conn) {}

func (q *sendQueue) empty() bool { return false }
