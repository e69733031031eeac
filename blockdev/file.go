package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a Device backed by a regular file or a block device.
type File struct {
	f        *os.File
	path     string
	size     atomic.Int64 // what is used of it (Limit, Resize)
	capacity atomic.Int64 // its real size
	detached atomic.Bool  // closed by Detach: I/O fails with ErrDetached
	block    bool         // f is a block device
	readOnly bool
	syncer   *Syncer
	nowait   noWait // RWF_NOWAIT first (see nowait.go)
}

var _ Device = (*File)(nil)

// OpenFile opens path as a Device. A regular file is used at its current
// size; a block device at the size the kernel reports. If readOnly is set,
// every write returns ErrReadOnly.
func OpenFile(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open disk %s: %w", path, err)
	}
	d, err := newFile(f, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// CreateFile creates (or opens) the regular file at path and makes it size
// bytes long, sparse where the filesystem allows. An existing larger file is
// not shrunk.
func CreateFile(path string, size int64) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create disk %s: %w", path, err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() < size {
		err = f.Truncate(size)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size disk %s to %d bytes: %w", path, size, err)
	}
	d, err := newFile(f, false)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func newFile(f *os.File, readOnly bool) (*File, error) {
	d := &File{readOnly: readOnly}
	if err := d.use(f); err != nil {
		return nil, err
	}
	d.size.Store(d.capacity.Load())
	return d, nil
}

// use makes f the file behind d (at open and at Attach).
func (d *File) use(f *os.File) error {
	var capacity int64
	switch st, err := f.Stat(); {
	case err != nil:
		return fmt.Errorf("stat disk %s: %w", f.Name(), err)
	case st.Mode().IsRegular():
		capacity = st.Size()
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.block = true
		var sz uint64
		if err := ioctlPtr(int(f.Fd()), unix.BLKGETSIZE64, unsafe.Pointer(&sz)); err != nil {
			return fmt.Errorf("read size of block device %s: %w", f.Name(), err)
		}
		capacity = int64(sz)
	default:
		return fmt.Errorf("disk %s is neither a regular file nor a block device", f.Name())
	}
	d.f, d.path = f, f.Name()
	d.nowait.use(f)
	d.capacity.Store(capacity)
	d.syncer = NewSyncer(func() error { return unix.Fdatasync(int(f.Fd())) })
	return nil
}

// Detach flushes the disk and closes it: until Attach, every I/O fails with
// ErrDetached and the disk is not touched. The caller makes sure no I/O
// runs during Detach and Attach (the data path using d is closed).
func (d *File) Detach() error {
	if d.detached.Load() {
		return nil
	}
	ferr := d.Flush()
	d.detached.Store(true)
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close disk %s: %w", d.path, err)
	}
	return ferr
}

// Attach reopens a detached disk by its path. It must still hold the
// bytes in use (Size).
func (d *File) Attach() error {
	if !d.detached.Load() {
		return nil
	}
	flag := os.O_RDWR
	if d.readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(d.path, flag, 0)
	if err != nil {
		return fmt.Errorf("open disk %s: %w", d.path, err)
	}
	if err := d.use(f); err != nil {
		f.Close()
		return err
	}
	if c := d.capacity.Load(); c < d.size.Load() {
		f.Close()
		return fmt.Errorf("disk %s holds %d bytes now, fewer than the %d in use: it cannot be attached", d.path, c, d.size.Load())
	}
	d.detached.Store(false)
	return nil
}

// Detached reports whether the disk is detached.
func (d *File) Detached() bool { return d.detached.Load() }

// Limit makes the device size bytes long, which must not exceed its real
// size and must be a multiple of 512: the rest of the disk is not used.
func (d *File) Limit(size int64) error {
	if size <= 0 || size%512 != 0 {
		return fmt.Errorf("size %d for disk %s must be a positive multiple of 512", size, d.path)
	}
	if c := d.capacity.Load(); size > c {
		return fmt.Errorf("disk %s holds %d bytes, fewer than the %d the resource needs: grow the disk or lower the resource's size", d.path, c, size)
	}
	d.size.Store(size)
	return nil
}

// Resize implements Resizer: it grows the part of the disk in use (up to
// its capacity).
func (d *File) Resize(size int64) error {
	if size < d.size.Load() {
		return fmt.Errorf("disk %s: shrinking from %d to %d bytes is not supported", d.path, d.size.Load(), size)
	}
	return d.Limit(size)
}

// Capacity is the disk's real size: how far Resize may grow it.
func (d *File) Capacity() int64 { return d.capacity.Load() }

// Name returns the path the device was opened with.
func (d *File) Name() string { return d.path }

// ReadAt implements Device.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if d.detached.Load() {
		return 0, ErrDetached
	}
	if err := CheckRange(off, int64(len(p)), d.size.Load()); err != nil {
		return 0, err
	}
	done := d.nowait.try(p, off, false)
	if done == len(p) {
		return done, nil
	}
	n, err := d.f.ReadAt(p[done:], off+int64(done))
	n += done
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

// WriteAt implements Device.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, ErrReadOnly
	}
	if d.detached.Load() {
		return 0, ErrDetached
	}
	if err := CheckRange(off, int64(len(p)), d.size.Load()); err != nil {
		return 0, err
	}
	done := d.nowait.try(p, off, true)
	if done == len(p) {
		d.syncer.MarkDirty()
		return done, nil
	}
	n, err := d.f.WriteAt(p[done:], off+int64(done))
	n += done
	d.syncer.MarkDirty()
	if errors.Is(err, unix.ENOSPC) {
		err = fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return n, err
}

// Flush implements Device with one fdatasync shared by concurrent callers.
// It returns at once when nothing was written since the last flush.
func (d *File) Flush() error {
	if d.readOnly {
		return nil
	}
	if d.detached.Load() {
		return ErrDetached
	}
	if err := d.syncer.Sync(); err != nil {
		return fmt.Errorf("fdatasync %s: %w", d.path, err)
	}
	return nil
}

// Trim implements Device: it punches a hole in a file, or zeroes the range
// of a block device (BLKZEROOUT, which may discard).
func (d *File) Trim(off, length int64) error { return d.zero(off, length, true) }

// WriteZeroes implements Device.
func (d *File) WriteZeroes(off, length int64) error { return d.zero(off, length, false) }

func (d *File) zero(off, length int64, punch bool) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if d.detached.Load() {
		return ErrDetached
	}
	if err := CheckRange(off, length, d.size.Load()); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	d.syncer.MarkDirty()
	fd := int(d.f.Fd())
	if d.block {
		r := [2]uint64{uint64(off), uint64(length)}
		if err := ioctlPtr(fd, unix.BLKZEROOUT, unsafe.Pointer(&r)); err == nil {
			return nil
		}
	} else {
		mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
		if punch {
			mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		}
		if err := unix.Fallocate(fd, mode, off, length); err == nil {
			return nil
		}
	}
	return d.writeZeroes(off, length)
}

var zeroBuf [1 << 20]byte

// writeZeroes is the fallback when the filesystem or device cannot zero a
// range itself.
func (d *File) writeZeroes(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := d.f.WriteAt(zeroBuf[:n], off); err != nil {
			return fmt.Errorf("write zeroes to %s: %w", d.path, err)
		}
		off += n
		length -= n
	}
	return nil
}

// Size implements Device.
func (d *File) Size() int64 { return d.size.Load() }

// Close implements Device.
func (d *File) Close() error {
	if d.detached.Load() {
		return nil
	}
	return d.f.Close()
}

var _ ExtentReporter = (*File)(nil)

// Extents implements ExtentReporter. On a regular file it asks the
// filesystem (lseek SEEK_DATA and SEEK_HOLE): holes are reported Hole and
// Zero, the rest as data. A filesystem without hole support reports the
// whole file as data. A block device is reported as all data: the kernel
// offers no reliable way to learn what reads as zeros there
// (BLKDISCARDZEROES always answers 0 since Linux 4.12).
func (d *File) Extents(dst []Extent, off, length int64, limit int) ([]Extent, error) {
	if d.detached.Load() {
		return dst, ErrDetached
	}
	if err := CheckRange(off, length, d.size.Load()); err != nil {
		return dst, err
	}
	end := off + length
	if d.block {
		return append(dst, Extent{Offset: off, Length: length}), nil
	}
	fd := int(d.f.Fd())
	for n := 0; off < end && n < limit; n++ {
		// lseek with SEEK_DATA/SEEK_HOLE only returns a position; the
		// file offset it moves is not used by ReadAt/WriteAt (pread,
		// pwrite), so concurrent callers do not disturb each other.
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = end // no data from off to the end of the file
		case err != nil:
			// EINVAL and friends: no hole support; all data.
			return append(dst, Extent{Offset: off, Length: end - off}), nil
		}
		if data > off {
			e := Extent{Offset: off, Length: min(data, end) - off, Hole: true, Zero: true}
			dst = append(dst, e)
			off += e.Length
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil || hole <= off {
			hole = end // the file changed under us: call the rest data
		}
		e := Extent{Offset: off, Length: min(hole, end) - off}
		dst = append(dst, e)
		off += e.Length
	}
	return dst, nil
}
