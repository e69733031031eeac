package crashmodel

import (
	"strings"
	"testing"
)

// dev is a sector-granular device the test writes by hand.
type dev []byte

func (d dev) read(p []byte, off int64) error { copy(p, d[off:]); return nil }

func TestCheck(t *testing.T) {
	m := New(8 * SectorSize)
	d := make(dev, 8*SectorSize)
	w1, b1 := m.Begin(0, 2*SectorSize)
	copy(d, b1)
	m.Acked(w1)
	w2, b2 := m.Begin(SectorSize, 2*SectorSize) // issued after w1's ack
	copy(d[SectorSize:], b2)
	m.Acked(w2)
	_, b3 := m.Begin(4*SectorSize, SectorSize) // in flight
	cs := m.Now()
	ce := m.Now()
	if err := m.Check(d.read, cs, ce); err != nil {
		t.Fatalf("good device: %v", err)
	}
	copy(d[4*SectorSize:], b3) // an in-flight write may have landed
	if err := m.Check(d.read, cs, ce); err != nil {
		t.Fatalf("in-flight write landed: %v", err)
	}
	bad := func(name, want string, mod func(d dev)) {
		c := append(dev(nil), d...)
		mod(c)
		if err := m.Check(c.read, cs, ce); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	bad("lost write", "stale data of write 1", func(c dev) { copy(c[SectorSize:], b1[SectorSize:]) })
	bad("lost first write", "zero, but acknowledged", func(c dev) { clear(c[:SectorSize]) })
	bad("foreign data", "neither zero", func(c dev) { c[7*SectorSize+100] = 1 })
	bad("torn sector", "torn", func(c dev) { c[10] ^= 1 })
	bad("misplaced", "did not cover", func(c dev) { copy(c[6*SectorSize:], b1[:SectorSize]) })
}
