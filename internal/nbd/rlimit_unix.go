//go:build unix

package nbd

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// RaiseFDLimit raises the soft RLIMIT_NOFILE to the hard limit and
// returns the soft limit now in force. Every NBD connection costs a file
// descriptor, and so do the store's sockets and the cache's files: the
// default soft limit (often 1024) is too small for a server.
func RaiseFDLimit() (uint64, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
			// Keep the old limit: it is still the one in force.
			return rl.Cur, fmt.Errorf("raise RLIMIT_NOFILE from %d to %d: %w", rl.Cur, rl.Max, err)
		}
		rl = want
	}
	return rl.Cur, nil
}
