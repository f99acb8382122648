//go:build !unix

package nbd

import "errors"

// RaiseFDLimit is unavailable here: there is no RLIMIT_NOFILE.
func RaiseFDLimit() (uint64, error) {
	return 0, errors.New("file descriptor limits are not supported on this system")
}
