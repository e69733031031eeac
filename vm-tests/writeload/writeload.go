// Package writeload is the write-and-verify load the vm-tests guest runs on
// a mounted filesystem, shared by the guest helper (vm-tests/guestio) and
// the host, which checks disk images against the same expectations.
//
// Write number i (0, 1, 2, ...) replaces the file Name(i) in the load's
// directory with Content(i) and fsyncs the file and the directory. Files
// are reused round robin over Slots names, so the load runs as long as it
// needs in a small filesystem. The writer appends one line per event to
// its log (times are CLOCK_MONOTONIC nanoseconds of the guest):
//
//	b I T0      write I begins
//	d I T0 T1   write I is durable (write, fsync of file and directory done)
//	e I T MSG   write I failed (the writer stops)
package writeload

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Slots is how many file names the load cycles through.
const Slots = 1000

// Name is the file write i replaces, relative to the load's directory.
func Name(i int) string { return fmt.Sprintf("f%04d", i%Slots) }

// Size is the length of write i's file: 8 to 24 KiB.
func Size(i int) int { return 8<<10 + (i%5)*(4<<10) }

// Content is the deterministic content of write i.
func Content(i int) []byte {
	r := rand.NewChaCha8([32]byte{'w', 'l', byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)})
	b := make([]byte, Size(i))
	r.Read(b)
	return b
}

// Op is one write of the log.
type Op struct {
	I      int
	T0, T1 int64 // T1 is 0 while the write has not completed
}

// Log is a parsed writer log.
type Log struct {
	Ops    []Op // in order of I
	Errors []string
}

// Parse reads a writer log. A torn last line (the writer is still running)
// is ignored.
func Parse(r io.Reader) (*Log, error) {
	l := &Log{}
	idx := map[int]int{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		i, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		switch f[0] {
		case "b":
			t0, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				continue
			}
			idx[i] = len(l.Ops)
			l.Ops = append(l.Ops, Op{I: i, T0: t0})
		case "d":
			if len(f) < 4 {
				continue
			}
			t1, err := strconv.ParseInt(f[3], 10, 64)
			if k, ok := idx[i]; ok && err == nil {
				l.Ops[k].T1 = t1
			}
		case "e":
			l.Errors = append(l.Errors, strings.Join(f[1:], " "))
		}
	}
	return l, sc.Err()
}

// LastDone is the highest write number that completed, or -1.
func (l *Log) LastDone() int {
	for k := len(l.Ops) - 1; k >= 0; k-- {
		if l.Ops[k].T1 != 0 {
			return l.Ops[k].I
		}
	}
	return -1
}

// LastBegun is the highest write number that began, or -1.
func (l *Log) LastBegun() int {
	if len(l.Ops) == 0 {
		return -1
	}
	return l.Ops[len(l.Ops)-1].I
}

// DoneAfter counts the writes that completed after t.
func (l *Log) DoneAfter(t int64) int {
	n := 0
	for _, o := range l.Ops {
		if o.T1 > t {
			n++
		}
	}
	return n
}

// Expect returns what the load's directory must hold after writes up to
// last: for every name, the number of the last write to it up to last.
// Names whose last write is in (skipAfter, skipUpto] are left out: a crash
// (or a forced failover) may have caught those writes half done or lost
// them.
func Expect(last, skipAfter, skipUpto int) map[string]int {
	want := map[string]int{}
	for i := max(0, last-Slots+1); i <= last; i++ {
		want[Name(i)] = i
	}
	for name, i := range want {
		if i > skipAfter && i <= skipUpto {
			delete(want, name)
		}
	}
	return want
}

// Stats describes the writes around one event in a window [From, To] of
// guest time (a host step): every write that was running at some time
// from From until the end of the log.
type Stats struct {
	Ops        int           // writes completed from From on
	MaxOp      time.Duration // longest write+fsync that ran at some time after From
	MaxOpI     int           // its number
	MaxGap     time.Duration // longest time without a completed write, from From on
	FirstDone  time.Duration // from From to the first write completed after it
	Baseline   time.Duration // median write+fsync of the (up to 50) writes completed before From
	StepLength time.Duration // To - From
}

// Window computes Stats for the event [from, to].
func (l *Log) Window(from, to int64) Stats {
	s := Stats{MaxOpI: -1, StepLength: time.Duration(to - from)}
	var before []time.Duration
	last := from
	for _, o := range l.Ops {
		if o.T1 == 0 {
			continue
		}
		if o.T1 <= from {
			before = append(before, time.Duration(o.T1-o.T0))
			continue
		}
		s.Ops++
		if d := time.Duration(o.T1 - o.T0); d > s.MaxOp {
			s.MaxOp, s.MaxOpI = d, o.I
		}
		if s.FirstDone == 0 {
			s.FirstDone = time.Duration(o.T1 - from)
		}
		if g := time.Duration(o.T1 - last); g > s.MaxGap {
			s.MaxGap = g
		}
		last = o.T1
	}
	if len(before) > 50 {
		before = before[len(before)-50:]
	}
	if len(before) > 0 {
		sort.Slice(before, func(a, b int) bool { return before[a] < before[b] })
		s.Baseline = before[len(before)/2]
	}
	return s
}

// String is the one-line form the guest prints (seconds, millisecond
// resolution); ParseStats reads it back.
func (s Stats) String() string {
	sec := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }
	return fmt.Sprintf("max_op=%s max_gap=%s first_done=%s ops=%d baseline=%s step=%s max_op_write=%d",
		sec(s.MaxOp), sec(s.MaxGap), sec(s.FirstDone), s.Ops, sec(s.Baseline), sec(s.StepLength), s.MaxOpI)
}

// ParseStats reads Stats.String.
func ParseStats(line string) (Stats, error) {
	var s Stats
	seen := 0
	for _, kv := range strings.Fields(line) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if k == "ops" || k == "max_op_write" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return s, fmt.Errorf("stats %q: %s: %w", line, k, err)
			}
			if k == "ops" {
				s.Ops = n
			} else {
				s.MaxOpI = n
			}
			seen++
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return s, fmt.Errorf("stats %q: %s: %w", line, k, err)
		}
		d := time.Duration(f * float64(time.Second))
		switch k {
		case "max_op":
			s.MaxOp = d
		case "max_gap":
			s.MaxGap = d
		case "first_done":
			s.FirstDone = d
		case "baseline":
			s.Baseline = d
		case "step":
			s.StepLength = d
		default:
			continue
		}
		seen++
	}
	if seen != 7 {
		return s, fmt.Errorf("stats %q: want 7 fields, have %d", line, seen)
	}
	return s, nil
}
