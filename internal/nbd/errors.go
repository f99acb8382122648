package nbd

import (
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// errnoFor maps a device error to the NBD error value sent to the client.
func errnoFor(err error) uint32 {
	switch {
	case errors.Is(err, blockdev.ErrFenced):
		return errShutdown
	case errors.Is(err, blockdev.ErrReadOnly):
		return errPerm
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errInval
	case errors.Is(err, blockdev.ErrNoSpace):
		return errNoSpc
	default:
		return errIO
	}
}

// numKinds is the number of error kinds errorStats tracks (see kindIndex).
const numKinds = 5

// kindErrno is the inverse of kindIndex.
func kindErrno(i int) uint32 {
	switch i {
	case 0:
		return errPerm
	case 2:
		return errInval
	case 3:
		return errNoSpc
	case 4:
		return errShutdown
	}
	return errIO
}

func errnoName(errno uint32) string {
	switch errno {
	case errPerm:
		return "EPERM"
	case errIO:
		return "EIO"
	case errInval:
		return "EINVAL"
	case errNoSpc:
		return "ENOSPC"
	case errShutdown:
		return "ESHUTDOWN"
	}
	return "unknown"
}

func kindIndex(errno uint32) int {
	switch errno {
	case errPerm:
		return 0
	case errInval:
		return 2
	case errNoSpc:
		return 3
	case errShutdown:
		return 4
	}
	return 1 // EIO
}

// errorStats counts error replies on one connection. The first error of
// each kind is logged with its details; the rest are only counted and
// summarized when the connection closes, so a failing device does not flood
// the log with one line per request.
type errorStats struct {
	log      *slog.Logger
	rejects  [numKinds]atomic.Int64 // refused before reaching the device
	failures [numKinds]atomic.Int64 // returned by the device
}

// rejected counts a request refused by checkRequest.
func (s *errorStats) rejected(r request, errno uint32) {
	if s.rejects[kindIndex(errno)].Add(1) == 1 {
		s.log.Warn("nbd: rejected request (further ones on this connection are only counted)",
			"errno", errnoName(errno), "type", r.Type, "flags", r.Flags, "offset", r.Offset, "length", r.Length)
	}
}

// failed counts a device error and returns its NBD error value.
func (s *errorStats) failed(r request, err error) uint32 {
	errno := errnoFor(err)
	if s.failures[kindIndex(errno)].Add(1) == 1 {
		s.log.Error("nbd: device error (further ones on this connection are only counted)",
			"errno", errnoName(errno), "type", r.Type, "offset", r.Offset, "length", r.Length, "err", err)
	}
	return errno
}

// summary logs the counts, if any errors occurred.
func (s *errorStats) summary() {
	var attrs []any
	for i := range numKinds {
		k := kindErrno(i)
		if n := s.rejects[i].Load(); n > 0 {
			attrs = append(attrs, "rejected_"+errnoName(k), n)
		}
		if n := s.failures[i].Load(); n > 0 {
			attrs = append(attrs, "failed_"+errnoName(k), n)
		}
	}
	if len(attrs) > 0 {
		s.log.Info("nbd: connection error summary", attrs...)
	}
}
