// Package blockdev is the contract between the volume engine and the exports
// that serve it (NBD, FUSE): a Device and the errors a Device may return.
package blockdev

import (
	"context"
	"errors"
)

// Errors a Device returns; exports map them to protocol error codes
// (NBD: ESHUTDOWN, EPERM, EINVAL, ENOSPC; anything else is EIO).
var (
	// ErrFenced: another writer took over the volume; this device will never
	// acknowledge another write or flush.
	ErrFenced = errors.New("volume fenced: another writer took over")
	// ErrReadOnly: a write to a read-only device.
	ErrReadOnly = errors.New("volume is read-only")
	// ErrOutOfRange: the request extends past the end of the device.
	ErrOutOfRange = errors.New("request out of range")
	// ErrNoSpace: the device cannot accept more data.
	ErrNoSpace = errors.New("no space left")
	// ErrClosed: the device was closed.
	ErrClosed = errors.New("device closed")
)

// Device is a fixed-size block device. Methods are safe for concurrent use.
// Offsets and lengths are in bytes and need not be aligned.
type Device interface {
	// Size in bytes; fixed for the life of the Device.
	Size() int64
	// BlockSize is the preferred I/O size in bytes (a power of two).
	BlockSize() int
	// ReadOnly reports whether writes are refused with ErrReadOnly.
	ReadOnly() bool
	// ReadAt fills p with the bytes at off. Unwritten ranges read as zeros.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. The data is visible to later reads at once;
	// it is durable after the next successful Flush. p is not retained.
	WriteAt(ctx context.Context, p []byte, off int64) error
	// WriteZeroes makes [off, off+length) read as zeros; no bytes are stored.
	WriteZeroes(ctx context.Context, off, length int64) error
	// Trim discards [off, off+length); urldisk's trimmed ranges read as zeros.
	Trim(ctx context.Context, off, length int64) error
	// Flush returns once every write completed before the call is durable.
	Flush(ctx context.Context) error
}
