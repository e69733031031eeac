package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits maps a lower-cased unit suffix to its multiplier. Single letters and
// the IEC "iB" forms are powers of 1024 (as in lvm and qemu-img); the SI "B"
// forms are powers of 1000 (as disk vendors count).
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	"p": 1 << 50, "pib": 1 << 50, "pb": 1e15,
	"e": 1 << 60, "eib": 1 << 60, "eb": 1e18,
}

const unitHelp = "use a whole number with an optional unit: B, K or KiB, M or MiB, G or GiB, T or TiB (powers of 1024), or KB, MB, GB, TB (powers of 1000)"

// ParseSize parses a byte count such as "100GiB", "10 GB", "512" or "4k".
//
// The number must be a non-negative whole number; one optional run of spaces
// may separate it from the unit. Units are case-insensitive: B; K, KiB, M, MiB,
// G, GiB, T, TiB, P, PiB, E, EiB are powers of 1024; KB, MB, GB, TB, PB, EB are
// powers of 1000. A bare number is bytes. ParseSize does not enforce
// alignment or a minimum; the callers (size, segment_size) do.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		if t == "" {
			return 0, fmt.Errorf("empty size; %s", unitHelp)
		}
		if t[0] == '-' {
			return 0, fmt.Errorf("size %q is negative; sizes must be zero or more", s)
		}
		return 0, fmt.Errorf("size %q does not start with a number; %s", s, unitHelp)
	}
	unit := strings.TrimLeft(t[i:], " \t")
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("size %q is not a whole number; use a smaller unit instead of a fraction (e.g. 1536MiB, not 1.5GiB)", s)
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("size %q has an unknown unit %q; %s", s, unit, unitHelp)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large (the limit is 8 EiB)", s)
	}
	return n * mult, nil
}

// FormatSize formats n exactly, in the largest power-of-1024 unit that divides
// it: "1 GiB", "256 MiB", "1536 B". ParseSize(FormatSize(n)) == n for n >= 0.
func FormatSize(n int64) string {
	sign := ""
	u := uint64(n)
	if n < 0 {
		sign = "-"
		u = -u
	}
	names := [...]string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for u != 0 && i < len(names)-1 && u%1024 == 0 {
		u /= 1024
		i++
	}
	return sign + strconv.FormatUint(u, 10) + " " + names[i]
}
