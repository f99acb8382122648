// Package nbdtest provides an in-memory blockdev.Device for tests of NBD
// exports: a RAM disk with a flush counter, a read-only mode, injectable
// errors and hooks, and a record of out-of-range calls (which a correct
// server never makes).
package nbdtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// Op names a Device method for error injection and hooks.
type Op int

// Device methods.
const (
	OpRead Op = iota
	OpWrite
	OpWriteZeroes
	OpTrim
	OpFlush
	numOps
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpWriteZeroes:
		return "write-zeroes"
	case OpTrim:
		return "trim"
	case OpFlush:
		return "flush"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// RAMDisk is a blockdev.Device backed by a byte slice.
type RAMDisk struct {
	size      int64
	blockSize int
	readOnly  bool

	flushes    atomic.Int64
	writes     atomic.Int64 // completed write-type calls
	violations atomic.Int64 // calls with a bad range

	mu sync.RWMutex
	// Guarded by mu:
	data []byte

	hookMu sync.Mutex
	// Guarded by hookMu:
	errs  [numOps]error
	hooks [numOps]func(ctx context.Context, off, length int64)
}

var _ blockdev.Device = (*RAMDisk)(nil)

// NewRAMDisk returns a zeroed disk of size bytes with the given preferred
// block size.
func NewRAMDisk(size int64, blockSize int, readOnly bool) *RAMDisk {
	return &RAMDisk{size: size, blockSize: blockSize, readOnly: readOnly, data: make([]byte, size)}
}

// Size implements blockdev.Device.
func (d *RAMDisk) Size() int64 { return d.size }

// BlockSize implements blockdev.Device.
func (d *RAMDisk) BlockSize() int { return d.blockSize }

// ReadOnly implements blockdev.Device.
func (d *RAMDisk) ReadOnly() bool { return d.readOnly }

// InjectError makes every later call of op fail with err (nil clears it).
func (d *RAMDisk) InjectError(op Op, err error) {
	d.hookMu.Lock()
	defer d.hookMu.Unlock()
	d.errs[op] = err
}

// SetHook installs f to run at the start of every call of op, before the
// data is touched (nil removes it). Hooks may block to hold a call open.
func (d *RAMDisk) SetHook(op Op, f func(ctx context.Context, off, length int64)) {
	d.hookMu.Lock()
	defer d.hookMu.Unlock()
	d.hooks[op] = f
}

// Flushes returns the number of successful Flush calls.
func (d *RAMDisk) Flushes() int64 { return d.flushes.Load() }

// Writes returns the number of successful WriteAt, WriteZeroes and Trim calls.
func (d *RAMDisk) Writes() int64 { return d.writes.Load() }

// Violations returns the number of calls made with an out-of-range request.
func (d *RAMDisk) Violations() int64 { return d.violations.Load() }

// Bytes returns a copy of the contents.
func (d *RAMDisk) Bytes() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]byte(nil), d.data...)
}

// SetBytes copies p into the disk at off (test setup; no checks for read-only).
func (d *RAMDisk) SetBytes(off int64, p []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
}

// begin runs the hook and returns the injected error for op, and checks
// the range.
func (d *RAMDisk) begin(ctx context.Context, op Op, off, length int64) error {
	d.hookMu.Lock()
	hook, err := d.hooks[op], d.errs[op]
	d.hookMu.Unlock()
	if hook != nil {
		hook(ctx, off, length)
	}
	if err != nil {
		return err
	}
	if op != OpFlush && (off < 0 || length < 0 || off > d.size || length > d.size-off) {
		d.violations.Add(1)
		return fmt.Errorf("ramdisk %s [%d, +%d) of %d: %w", op, off, length, d.size, blockdev.ErrOutOfRange)
	}
	if op != OpRead && op != OpFlush && d.readOnly {
		return blockdev.ErrReadOnly
	}
	return ctx.Err()
}

// ReadAt implements blockdev.Device.
func (d *RAMDisk) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.begin(ctx, OpRead, off, int64(len(p))); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	copy(p, d.data[off:])
	return nil
}

// WriteAt implements blockdev.Device.
func (d *RAMDisk) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.begin(ctx, OpWrite, off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	d.writes.Add(1)
	return nil
}

// WriteZeroes implements blockdev.Device.
func (d *RAMDisk) WriteZeroes(ctx context.Context, off, length int64) error {
	return d.zero(ctx, OpWriteZeroes, off, length)
}

// Trim implements blockdev.Device; trimmed ranges read as zeros.
func (d *RAMDisk) Trim(ctx context.Context, off, length int64) error {
	return d.zero(ctx, OpTrim, off, length)
}

func (d *RAMDisk) zero(ctx context.Context, op Op, off, length int64) error {
	if err := d.begin(ctx, op, off, length); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	d.writes.Add(1)
	return nil
}

// Flush implements blockdev.Device.
func (d *RAMDisk) Flush(ctx context.Context) error {
	if err := d.begin(ctx, OpFlush, 0, 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}
