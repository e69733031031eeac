package blockdev

import (
	"errors"
	"fmt"
)

// Resizer is implemented by devices that can grow while in use (a
// resource's resize).
type Resizer interface {
	// Resize grows the device to size bytes; it never shrinks it.
	Resize(size int64) error
}

// Device is a block device addressed in bytes.
//
// Implementations must be safe for concurrent use: the exports issue reads
// and writes from many goroutines at once. Offsets and lengths are checked by
// the caller against Size, but implementations must still reject out-of-range
// requests with ErrOutOfRange rather than panic or grow.
type Device interface {
	// ReadAt reads len(p) bytes at off. It returns every write that returned
	// successfully before ReadAt was called.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off. The data is durable only after a
	// later Flush returns nil (or, for devices that say so, at once).
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write that returned before Flush was called durable.
	// Concurrent callers may share one underlying sync (group commit).
	Flush() error
	// Trim discards length bytes at off. Afterwards the range reads as zeros.
	Trim(off, length int64) error
	// WriteZeroes makes length bytes at off read as zeros, allocating them
	// where the device can (it may discard instead when that is cheaper and
	// still reads back as zeros).
	WriteZeroes(off, length int64) error
	// Size is the device's size in bytes.
	Size() int64
	// Close releases the device. It does not imply Flush.
	Close() error
}

// FUAWriter is implemented by devices that can make one write durable as
// part of it (Force Unit Access) more cheaply than WriteAt and a Flush
// after it: a replicated resource's log joins the write to the group commit
// that starts as soon as it is written.
type FUAWriter interface {
	// WriteAtFUA is WriteAt that returns only once p is durable.
	WriteAtFUA(p []byte, off int64) (int, error)
}

// WriteAtFUA writes p at off on d and returns once it is durable: with
// d's WriteAtFUA where it is a FUAWriter, else WriteAt and Flush.
func WriteAtFUA(d Device, p []byte, off int64) (int, error) {
	if f, ok := d.(FUAWriter); ok {
		return f.WriteAtFUA(p, off)
	}
	n, err := d.WriteAt(p, off)
	if err == nil {
		err = d.Flush()
	}
	return n, err
}

// ErrOutOfRange is returned for a request that reaches past the end of the
// device or has a negative offset or length.
var ErrOutOfRange = errors.New("request out of the device's range")

// ErrReadOnly is returned by devices opened read-only for any write.
var ErrReadOnly = errors.New("device is read-only")

// ErrDetached is returned for I/O on a detached disk (File.Detach).
var ErrDetached = errors.New("the disk is detached (`tharsis attach` reattaches it)")

// ErrNoSpace is returned when a write cannot be stored for lack of space
// (for example a full transaction log). Exports map it to ENOSPC.
var ErrNoSpace = errors.New("no space left to store the write")

// CheckRange returns ErrOutOfRange (wrapped with the request) unless
// [off, off+length) lies within a device of the given size.
func CheckRange(off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("offset %d length %d on a %d-byte device: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}
