package config

import (
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"0", 0, ""},
		{"512", 512, ""},
		{"512B", 512, ""},
		{"1b", 1, ""},
		{"4k", 4096, ""},
		{"4K", 4096, ""},
		{"4KiB", 4096, ""},
		{"4kib", 4096, ""},
		{"4KB", 4000, ""},
		{"1M", 1 << 20, ""},
		{"1m", 1 << 20, ""},
		{"1MiB", 1 << 20, ""},
		{"1MB", 1e6, ""},
		{"100GiB", 100 << 30, ""},
		{"100 GiB", 100 << 30, ""},
		{" 10  GB ", 10e9, ""},
		{"10g", 10 << 30, ""},
		{"2T", 2 << 40, ""},
		{"2TiB", 2 << 40, ""},
		{"2TB", 2e12, ""},
		{"1PiB", 1 << 50, ""},
		{"7EiB", 7 << 60, ""},
		{"9223372036854775807", math.MaxInt64, ""},
		{"", 0, "empty size"},
		{"GiB", 0, "does not start with a number"},
		{"-1", 0, "is negative"},
		{"+1", 0, "does not start with a number"},
		{"1.5GiB", 0, "not a whole number"},
		{"1,5G", 0, "not a whole number"},
		{"10 XB", 0, `unknown unit "XB"`},
		{"10 G B", 0, `unknown unit "G B"`},
		{"1Gi", 0, "unknown unit"},
		{"0x10", 0, "unknown unit"},
		{"8EiB", 0, "too large"},
		{"9223372036854775808", 0, "too large"},
		{"99999999999999999999999", 0, "too large"},
		{"9000000000T", 0, "too large"},
	} {
		got, err := ParseSize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSize(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{512, "512 B"},
		{1536, "1536 B"},
		{1024, "1 KiB"},
		{1 << 30, "1 GiB"},
		{256 << 20, "256 MiB"},
		{100 << 30, "100 GiB"},
		{3 << 40, "3 TiB"},
		{1 << 60, "1 EiB"},
		{1e9, "1000000000 B"},
		{-2048, "-2 KiB"},
		{math.MaxInt64, "9223372036854775807 B"},
		{math.MinInt64, "-8 EiB"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
		if tc.in >= 0 {
			if back, err := ParseSize(FormatSize(tc.in)); err != nil || back != tc.in {
				t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tc.in, back, err)
			}
		}
	}
}
