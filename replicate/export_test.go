package replicate

import (
	"bytes"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// compressedSource is a Source shipping its log compressed with c (only
// for Sources without the optional interfaces, which it hides).
type compressedSource struct {
	Source
	c Compression
}

func (s compressedSource) ShipCompression() Compression { return s.c }

// crash abandons p as a killed process would: no checkpoint, no flush of
// the data device, the segment left unsealed. The data device is not closed.
func (p *Primary) crash() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.inflight.Wait()
	p.stopApplier() // what the window holds stays unapplied, as after a kill
	close(p.stop)
	p.bg.Wait()
	p.w.abandoned = true // a kill leaves the zeros ahead behind: close must not cut them
	p.w.close()
	p.em.close()
}

// faultFS injects faults into the segments it opens.
type faultFS struct {
	OSFS
	mu        sync.Mutex
	avail     int64 // < 0: the real value
	writeErr  error // a segment write writes half and fails with this
	syncErr   error // a segment fdatasync fails with this
	syncCount int   // segment fdatasyncs
	// syncGate, if set, holds every segment fdatasync: it first sends on
	// syncEntered (if set), then waits until syncGate is closed.
	syncGate    chan struct{}
	syncEntered chan struct{}
	// onWrite, if set, runs before every segment write (outside mu); an
	// error fails the write after half of it is written.
	onWrite func(off int64) error
	// zeroErr fails every segment write of zeros (the writer's zeros
	// ahead; a record is never all zero); zeroWrites counts them.
	zeroErr    error
	zeroWrites int
	// onZeroWrite, if set, runs first in every segment write of zeros
	// (outside mu).
	onZeroWrite func(off int64)
	// zeroSyncErr fails the first segment fdatasync after a write of zeros.
	zeroSyncErr error
}

func newFaultFS() *faultFS { return &faultFS{avail: -1} }

func (f *faultFS) set(fn func(*faultFS)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *faultFS) Create(name string) (File, error) {
	fl, err := f.OSFS.Create(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: fl, fs: f, seg: strings.HasPrefix(filepath.Base(name), "log-")}, nil
}

func (f *faultFS) Open(name string) (File, error) {
	fl, err := f.OSFS.Open(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: fl, fs: f, seg: strings.HasPrefix(filepath.Base(name), "log-")}, nil
}

func (f *faultFS) Available(dir string) (int64, error) {
	f.mu.Lock()
	a := f.avail
	f.mu.Unlock()
	if a >= 0 {
		return a, nil
	}
	return f.OSFS.Available(dir)
}

type faultFile struct {
	File
	fs  *faultFS
	seg bool
	// zeroed: zeros were written since the last fdatasync (under fs.mu).
	zeroed bool
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	zero := f.seg && len(p) > 0 && p[0] == 0 && bytes.Equal(p, make([]byte, len(p)))
	if zero {
		f.fs.mu.Lock()
		hook := f.fs.onZeroWrite
		f.fs.mu.Unlock()
		if hook != nil {
			hook(off)
		}
	}
	f.fs.mu.Lock()
	err, hook := f.fs.writeErr, f.fs.onWrite
	if zero {
		f.zeroed = true
		f.fs.zeroWrites++
		if f.fs.zeroErr != nil {
			err = f.fs.zeroErr
		}
	}
	f.fs.mu.Unlock()
	if hook != nil && f.seg && err == nil {
		err = hook(off)
	}
	if err != nil && f.seg {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if !f.seg {
		return f.File.Sync()
	}
	f.fs.mu.Lock()
	err := f.fs.syncErr
	if f.zeroed && f.fs.zeroSyncErr != nil {
		err = f.fs.zeroSyncErr
	}
	f.zeroed = false
	f.fs.syncCount++
	gate, entered := f.fs.syncGate, f.fs.syncEntered
	f.fs.mu.Unlock()
	if gate != nil {
		if entered != nil {
			entered <- struct{}{}
		}
		<-gate
	}
	if err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *faultFS) syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncCount
}

var errENOSPC = unix.ENOSPC
