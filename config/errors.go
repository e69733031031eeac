package config

import (
	"sort"
	"strconv"
	"strings"
)

// Error is one problem in a configuration file. Line is 1-based; 0 means the
// problem concerns the whole file (for example: no nodes at all). Key is the
// dotted path of the offending key, such as "resources.data.size" or
// "exports.aoe[1].shelf" (array indexes count from 0); it is empty for syntax
// errors.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

// Error formats e as "FILE:LINE: KEY: MSG", leaving out LINE when it is 0 and
// KEY when it is empty.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a configuration file, sorted by line.
// Parse and Load return it (as an error) when the file is not valid.
type Errors []*Error

// Error lists all problems, one per line.
func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

func (e Errors) sort() {
	sort.SliceStable(e, func(i, j int) bool { return e[i].Line < e[j].Line })
}

// Suggest returns the word of valid closest to word, or "" when none is
// close enough to be a likely typo (the CLI's "did you mean" for commands).
func Suggest(word string, valid []string) string { return suggest(word, valid) }

// suggest returns the valid key closest to key, or "" when none is close
// enough to be a likely typo.
func suggest(key string, valid []string) string {
	best, bestD := "", 1+len(key)/3
	if bestD > 3 {
		bestD = 3
	}
	lk := strings.ToLower(key)
	for _, v := range valid {
		d := editDistance(lk, v)
		if d <= bestD && (best == "" || d < bestD) {
			best, bestD = v, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes. Keys are
// short (the caller caps them), so the O(len(a)*len(b)) cost is fine.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
