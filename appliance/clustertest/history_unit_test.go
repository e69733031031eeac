package clustertest

import (
	"math/rand/v2"
	"testing"
)

// TestPrefixOf checks the prefix checker itself (no root needed): it finds
// every prefix state, rejects a state no prefix produces, and honours lo.
func TestPrefixOf(t *testing.T) {
	const size = 64 * block
	rng := rand.New(rand.NewPCG(1, 2))
	var writes []Write
	for range 40 {
		nb := 1 + rng.IntN(6)
		w := Write{Off: rng.Int64N(size/block-int64(nb)+1) * block, Data: make([]byte, nb*block)}
		fillRandom(rng, w.Data)
		writes = append(writes, w)
	}
	base := make([]byte, size)
	fillRandom(rng, base[:8*block])
	for _, b := range [][]byte{nil, base} {
		for k := 0; k <= len(writes); k++ {
			snap := Apply(b, size, writes[:k])
			got := PrefixOf(snap, b, writes, 0)
			// An earlier prefix can give the same bytes only if write k-1
			// changed nothing, which random data rules out.
			if got != k {
				t.Fatalf("base %v: PrefixOf(state after %d writes) = %d", b != nil, k, got)
			}
			if k > 0 && PrefixOf(snap, b, writes, k+1) != -1 && k < len(writes) {
				t.Fatalf("PrefixOf with lo=%d found a later prefix for the state after %d writes", k+1, k)
			}
		}
	}
	// A state that mixes write 10 applied without write 9: no prefix.
	snap := Apply(nil, size, writes[:9])
	copy(snap[writes[10].Off:], writes[10].Data)
	got := PrefixOf(snap, nil, writes, 0)
	if got != -1 && !sameAsPrefix(snap, writes, got) {
		t.Fatalf("PrefixOf of an out-of-order state = %d, but that prefix differs", got)
	}
	if !covers(writes[10], writes[9]) && got != -1 {
		t.Fatalf("PrefixOf of write 10 applied without write 9 = %d, want -1", got)
	}
	// Half of a write (torn): no prefix.
	snap = Apply(nil, size, writes[:20])
	w := writes[20]
	copy(snap[w.Off:], w.Data[:block])
	if len(w.Data) > block {
		if got := PrefixOf(snap, nil, writes, 0); got != -1 {
			t.Fatalf("PrefixOf of a torn write = %d, want -1", got)
		}
	}
	// One flipped byte: no prefix.
	snap = Apply(nil, size, writes)
	snap[5*block+7] ^= 1
	if got := PrefixOf(snap, nil, writes, 0); got != -1 {
		t.Fatalf("PrefixOf of a corrupted state = %d, want -1", got)
	}
}

// covers reports whether a overwrites every byte of b.
func covers(a, b Write) bool {
	return a.Off <= b.Off && b.Off+int64(len(b.Data)) <= a.Off+int64(len(a.Data))
}

func sameAsPrefix(snap []byte, writes []Write, k int) bool {
	want := Apply(nil, int64(len(snap)), writes[:k])
	for i := range snap {
		if snap[i] != want[i] {
			return false
		}
	}
	return true
}
