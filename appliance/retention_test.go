package appliance

import "testing"

func TestLowOnSpace(t *testing.T) {
	const seg = 256 << 20
	for _, tc := range []struct {
		avail, total int64
		want         bool
	}{
		{avail: 100 << 30, total: 200 << 30, want: false},
		{avail: 30 << 30, total: 200 << 30, want: true}, // under a fifth
		{avail: 400 << 20, total: 1 << 30, want: true},  // a big share, but under two segments
		{avail: 900 << 20, total: 1 << 30, want: false},
		{avail: 0, total: 0, want: true},
	} {
		if got := lowOnSpace(tc.avail, tc.total, seg); got != tc.want {
			t.Errorf("lowOnSpace(%d, %d) = %v, want %v", tc.avail, tc.total, got, tc.want)
		}
	}
}
