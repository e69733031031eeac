package replicate

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// FS is the filesystem seam of the log: the real one is OSFS; tests wrap it
// to inject torn writes, sync errors and lack of space.
type FS interface {
	// Create creates a new file; it fails if name exists.
	Create(name string) (File, error)
	// Open opens an existing file for reading and writing.
	Open(name string) (File, error)
	Remove(name string) error
	Rename(oldname, newname string) error
	// ReadDir returns the names of the entries of dir.
	ReadDir(dir string) ([]string, error)
	MkdirAll(dir string) error
	// SyncDir makes the entries of dir durable (fsync of the directory).
	SyncDir(dir string) error
	// Available is the number of bytes an unprivileged writer may still
	// allocate on the filesystem holding dir (statfs).
	Available(dir string) (int64, error)
}

// File is an open log file.
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	// Sync makes the file's data durable (fdatasync).
	Sync() error
	Size() (int64, error)
	Close() error
}

// OSFS is the FS of the operating system.
type OSFS struct{}

type osFile struct{ *os.File }

func (f osFile) Sync() error { return unix.Fdatasync(int(f.Fd())) }

// vectorWriter is a File that writes several buffers at an offset with one
// system call (pwritev).
type vectorWriter interface {
	WriteVAt(bufs [][]byte, off int64) (int, error)
}

// WriteVAt writes bufs one after the other at off with pwritev. It may
// change bufs.
func (f osFile) WriteVAt(bufs [][]byte, off int64) (int, error) {
	const iovMax = 1024
	fd := int(f.Fd())
	total := 0
	for len(bufs) > 0 {
		n, err := unix.Pwritev(fd, bufs[:min(len(bufs), iovMax)], off)
		total += max(n, 0)
		off += int64(max(n, 0))
		if err != nil {
			return total, err
		}
		if n <= 0 {
			return total, io.ErrShortWrite
		}
		for n > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
	}
	return total, nil
}

// writeVAt writes bufs at off to f, with one pwritev when f can.
func writeVAt(f File, bufs [][]byte, off int64, scratch *[]byte) (int, error) {
	if vw, ok := f.(vectorWriter); ok {
		return vw.WriteVAt(bufs, off)
	}
	b := (*scratch)[:0]
	for _, x := range bufs {
		b = append(b, x...)
	}
	*scratch = b
	return f.WriteAt(b, off)
}

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Create implements FS.
func (OSFS) Create(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Open implements FS.
func (OSFS) Open(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Remove implements FS.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// Rename implements FS.
func (OSFS) Rename(o, n string) error { return os.Rename(o, n) }

// MkdirAll implements FS.
func (OSFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

// ReadDir implements FS.
func (OSFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

// SyncDir implements FS.
func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Available implements FS.
func (OSFS) Available(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// zerosAheadUseless says whether dir (or, while it does not exist, its
// nearest existing parent) lies on a filesystem where zeros written ahead
// of the log's records gain nothing: copy-on-write ones (btrfs, ZFS,
// bcachefs), where an overwrite allocates blocks as an append does, and
// memory ones (tmpfs, ramfs), where fdatasync has nothing to write.
func zerosAheadUseless(dir string) bool {
	const zfsMagic, bcachefsMagic = 0x2fc12fc1, 0xca451a4e
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			switch int64(st.Type) {
			case unix.BTRFS_SUPER_MAGIC, zfsMagic, bcachefsMagic, unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
				return true
			}
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return false
		}
		dir = parent
	}
}

// isNoSpace reports whether err says the filesystem is full.
func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// readFile reads a whole small file through fsys.
func readFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("%s is %d bytes, too large", name, n)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF)) {
		return nil, err
	}
	return b, nil
}

// WriteFileAtomic replaces name with data durably (on the OS file system):
// tmp file, fdatasync, rename, fsync of the directory.
func WriteFileAtomic(name string, data []byte) error { return writeFileAtomic(OSFS{}, name, data) }

// writeFileAtomic replaces name with data durably: tmp file, fdatasync,
// rename, fsync of the directory.
func writeFileAtomic(fsys FS, name string, data []byte) error {
	tmp := name + ".tmp"
	_ = fsys.Remove(tmp)
	f, err := fsys.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		fsys.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		fsys.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		fsys.Remove(tmp)
		return err
	}
	if err := fsys.Rename(tmp, name); err != nil {
		return err
	}
	return fsys.SyncDir(filepath.Dir(name))
}
