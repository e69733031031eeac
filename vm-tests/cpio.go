package vmtests

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Entry is one member of a cpio archive. Exactly one of Data, Link or Dev
// describes it; a directory has IsDir set.
type Entry struct {
	Path  string // without leading slash, e.g. "bin/busybox"
	Mode  uint32 // permission bits
	Data  []byte // regular file content
	Link  string // symlink target
	IsDir bool
	Char  bool // character device with major:minor Dev
	Dev   [2]uint32
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// WriteCpio writes entries as an uncompressed "newc" cpio archive, the
// format the kernel unpacks as an initramfs. Parent directories are added
// as needed; entries are written in path order so output is deterministic.
func WriteCpio(w io.Writer, entries []Entry) error {
	all := map[string]Entry{}
	for _, e := range entries {
		e.Path = strings.Trim(e.Path, "/")
		all[e.Path] = e
		for d := parentDir(e.Path); d != ""; d = parentDir(d) {
			if _, ok := all[d]; !ok {
				all[d] = Entry{Path: d, IsDir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	bw := bufio.NewWriter(w)
	ino := uint32(1)
	for _, p := range paths {
		e := all[p]
		var mode uint32
		var body []byte
		var rmaj, rmin uint32
		switch {
		case e.IsDir:
			mode = sIFDIR | e.Mode
		case e.Link != "":
			mode = sIFLNK | 0o777
			body = []byte(e.Link)
		case e.Char:
			mode = sIFCHR | e.Mode
			rmaj, rmin = e.Dev[0], e.Dev[1]
		default:
			mode = sIFREG | e.Mode
			body = e.Data
		}
		if err := writeCpioRecord(bw, ino, p, mode, rmaj, rmin, body); err != nil {
			return err
		}
		ino++
	}
	if err := writeCpioRecord(bw, 0, "TRAILER!!!", 0, 0, 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

func writeCpioRecord(w *bufio.Writer, ino uint32, name string, mode, rmaj, rmin uint32, body []byte) error {
	nlink := uint32(1)
	if mode&0o170000 == sIFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(body), 0, 0, rmaj, rmin, len(name)+1, 0)
	if _, err := w.WriteString(hdr); err != nil {
		return err
	}
	w.WriteString(name)
	w.WriteByte(0)
	pad(w, 110+len(name)+1)
	w.Write(body)
	_, err := pad(w, len(body))
	return err
}

func pad(w *bufio.Writer, n int) (int, error) {
	if r := n % 4; r != 0 {
		return w.Write(make([]byte, 4-r))
	}
	return 0, nil
}
