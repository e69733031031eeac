package blockdev

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A read or write of a File first tries preadv2/pwritev2 with RWF_NOWAIT
// as a raw system call, which the Go runtime does not account as a
// blocking one: data in the page cache is copied without the scheduler's
// entersyscall/exitsyscall, which wakes the runtime's sysmon thread from
// its deep sleep whenever the process was idle (a futex wake and two
// context switches per request on a latency-bound AoE or NBD target).
// RWF_NOWAIT makes the kernel refuse with EAGAIN whatever would block
// (pages not cached, a buffered write the filesystem cannot do without
// waiting); then, and on any other error or a short transfer, the
// ordinary os.File call does the work and reports the error. A filesystem
// that does not support RWF_NOWAIT at all (EOPNOTSUPP, e.g. buffered
// writes on ext4) is not asked again.

// noWait remembers whether RWF_NOWAIT reads and writes are worth trying on
// one open file.
type noWait struct {
	rc       syscall.RawConn
	noRead   atomic.Bool // the file refused RWF_NOWAIT reads
	noWrite  atomic.Bool // the file refused RWF_NOWAIT writes
	disabled bool        // tests: always take the ordinary path
}

// nowaitOp is one raw preadv2/pwritev2; pooled so that the RawConn.Control
// callback (a method value made once) does not allocate per call.
type nowaitOp struct {
	nr    uintptr
	iov   unix.Iovec
	off   int64
	n     int
	errno syscall.Errno
	fn    func(fd uintptr)
}

var nowaitOps = sync.Pool{New: func() any {
	op := &nowaitOp{}
	op.fn = op.do
	return op
}}

func (op *nowaitOp) do(fd uintptr) {
	for {
		r, _, errno := unix.RawSyscall6(op.nr, fd, uintptr(unsafe.Pointer(&op.iov)), 1, uintptr(op.off), 0, unix.RWF_NOWAIT)
		if errno != unix.EINTR {
			op.n, op.errno = int(r), errno
			return
		}
	}
}

// use makes f the file tried (at open and Attach, while no I/O runs).
func (w *noWait) use(f *os.File) {
	rc, err := f.SyscallConn()
	w.rc, w.disabled = rc, err != nil
	w.noRead.Store(false)
	w.noWrite.Store(false)
}

// try transfers p at off with RWF_NOWAIT and returns how many bytes moved
// (0 when the caller must do it all the ordinary way). The RawConn keeps
// the descriptor open while the call runs.
func (w *noWait) try(p []byte, off int64, write bool) int {
	refused := &w.noRead
	nr := uintptr(unix.SYS_PREADV2)
	if write {
		refused, nr = &w.noWrite, unix.SYS_PWRITEV2
	}
	if w.disabled || len(p) == 0 || refused.Load() {
		return 0
	}
	op := nowaitOps.Get().(*nowaitOp)
	op.nr, op.off = nr, off
	op.iov.Base = &p[0]
	op.iov.SetLen(len(p))
	n, errno := 0, syscall.Errno(0)
	if w.rc.Control(op.fn) == nil {
		n, errno = op.n, op.errno
	}
	op.iov.Base = nil
	nowaitOps.Put(op)
	switch {
	case errno == unix.EOPNOTSUPP || errno == unix.EINVAL:
		refused.Store(true)
		return 0
	case errno != 0 || n < 0:
		return 0
	}
	return n
}
