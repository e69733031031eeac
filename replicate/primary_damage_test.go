package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// flipByte flips one byte of file path at off.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeTen writes records 1..10: 1000 bytes of i at 1000*(i-1).
func writeTen(p *Primary) {
	for i := range 10 {
		p.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 1000), int64(i)*1000)
	}
}

// A damaged record that is applied already does not stop the primary: the
// segment is moved aside (not deleted), reported, and the data is intact.
func TestDamagedAppliedSegmentQuarantined(t *testing.T) {
	logDir := t.TempDir()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, logDir, nil)
	writeTen(p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), mem.Bytes()...)
	seg := filepath.Join(logDir, "log-000000001-alpha")
	off := int64(3*(HeaderSize+1000) + HeaderSize + 10) // in the payload of record 4
	flipByte(t, seg, off)

	for round := range 2 { // and again with the gap in the log
		p = openTest(t, mem, logDir, nil)
		if !bytes.Equal(mem.Bytes(), want) {
			t.Fatalf("round %d: the data changed", round)
		}
		if _, err := p.WriteAt([]byte("more"), 20000); err != nil {
			t.Fatalf("round %d: write after recovery: %v", round, err)
		}
		p.drain() // the data device holds it
		want = append([]byte(nil), mem.Bytes()...)
		if round == 0 {
			d := p.Damage()
			if len(d) != 1 || d[0].Segment != "log-000000001-alpha" || d[0].Offset != 3*(HeaderSize+1000) || d[0].Quarantined != QuarantinePrefix+"log-000000001-alpha" {
				t.Fatalf("damage reported: %+v", d)
			}
			if q := p.Quarantined(); len(q) != 1 || q[0].Seq != 1 {
				t.Fatalf("quarantined: %v", q)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(seg); !os.IsNotExist(err) {
		t.Errorf("the damaged segment is still in the log: %v", err)
	}
	if _, err := os.Stat(filepath.Join(logDir, QuarantinePrefix+"log-000000001-alpha")); err != nil {
		t.Errorf("the damaged segment was not kept aside: %v", err)
	}
}

// Restore puts an intact copy of a quarantined segment back.
func TestRestoreQuarantinedSegment(t *testing.T) {
	logDir := t.TempDir()
	p := openTest(t, blockdev.NewMemory(devSize), logDir, nil)
	writeTen(p)
	p.Close()
	openTest(t, blockdev.NewMemory(devSize), logDir, nil).Close() // seals segment 1
	seg := filepath.Join(logDir, "log-000000001-alpha")
	intact, _ := os.ReadFile(seg)
	flipByte(t, seg, int64(HeaderSize+5))
	p = openTest(t, blockdev.NewMemory(devSize), logDir, nil)
	defer p.Close()
	name := SegmentName{Seq: 1, Node: "alpha"}
	copyPath := filepath.Join(logDir, "fetching-"+name.String())
	// A damaged copy is refused.
	bad := append([]byte(nil), intact...)
	bad[HeaderSize+7] ^= 1
	os.WriteFile(copyPath, bad, 0o600)
	if err := p.Restore(name, copyPath); err == nil {
		t.Fatal("a damaged copy was restored")
	}
	os.WriteFile(copyPath, intact, 0o600)
	if err := p.Restore(name, copyPath); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(seg); !bytes.Equal(got, intact) {
		t.Error("the restored segment differs from the intact copy")
	}
	if len(p.Quarantined()) != 0 || !p.Damage()[0].Restored {
		t.Errorf("after restore: quarantined %v, damage %+v", p.Quarantined(), p.Damage())
	}
	if st := p.Status(); st.Segments[0].Name != name.String() {
		t.Errorf("the log does not list the restored segment: %+v", st.Segments)
	}
}

// Damage in records that are not applied yet stops OpenPrimary with what to
// do; following option (2) of the message starts it without them.
func TestDamagedUnappliedRecordStopsOpen(t *testing.T) {
	logDir := t.TempDir()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, logDir, nil)
	writeTen(p)
	p.Flush()
	p.WriteAt([]byte("later"), 50000) // its synced field proves the rest durable
	p.Flush()
	seg := filepath.Join(logDir, p.Status().Current)
	p.crash()
	off := int64(3 * (HeaderSize + 1000))
	flipByte(t, seg, off+HeaderSize+10)
	_, err := OpenPrimary(blockdev.NewMemory(devSize), Options{Dir: logDir, Node: "alpha", Resource: "r0"})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with a damaged unapplied record: %v", err)
	}
	trunc := fmt.Sprintf("truncate -s %d %s", off, seg)
	for _, s := range []string{seg, fmt.Sprintf("byte offset %d", off), "not on the data device", "tharsis primary --force r0", trunc} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if err := os.Truncate(seg, off); err != nil {
		t.Fatal(err)
	}
	p = openTest(t, mem, logDir, nil)
	defer p.Close()
	if got := mem.Bytes()[2000:3000]; !bytes.Equal(got, bytes.Repeat([]byte{3}, 1000)) {
		t.Error("record 3 (before the damage) is not on the disk")
	}
}
