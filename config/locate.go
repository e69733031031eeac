package config

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Why a locator: github.com/BurntSushi/toml (v1.5.0) records key positions
// only in unexported MetaData fields; it exposes positions for syntax errors
// (ParseError.Position) but not for keys. Validation errors must still name
// the line, so locate scans the (already syntax-checked) document once and
// maps every key path to the line where that key is first written.
//
// Paths use the same form as Error.Key: segments joined by ".", array
// elements as "[i]" (counting from 0), and segments that are not bare keys
// written as TOML basic strings. It understands [table] and [[array]]
// headers (an array header starts a new element; later [a.b] headers under it
// refer to the newest element), dotted keys, quoted keys, inline tables
// (every inner key gets the line it is written on, which for TOML 1.0 is the
// inline table's line), arrays spanning lines (each element gets its own line
// as path[i]), multi-line strings and comments. It never fails: input it does
// not understand is skipped up to the end of the line.

// locator maps key paths to 1-based lines.
type locator struct {
	lines map[string]int
}

// maxLocateDepth bounds the nesting of arrays and inline tables the locator
// follows; deeper values are skipped (their keys then report the line of the
// nearest located ancestor).
const maxLocateDepth = 64

// line returns the line of path, else the first line of anything under it,
// else the line of its nearest located ancestor, else 0.
func (l *locator) line(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if n, ok := l.lines[p]; ok {
			return n
		}
		best := 0
		for k, n := range l.lines {
			if len(k) > len(p) && strings.HasPrefix(k, p) && (k[len(p)] == '.' || k[len(p)] == '[') {
				if best == 0 || n < best {
					best = n
				}
			}
		}
		if best > 0 {
			return best
		}
	}
	return 0
}

// parentPath strips the last segment (".key" or "[i]") of path.
func parentPath(p string) string {
	inQuote := false
	cut := 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\' && inQuote:
			i++
		case c == '"':
			inQuote = !inQuote
		case (c == '.' || c == '[') && !inQuote:
			cut = i
		}
	}
	return p[:cut]
}

// keySeg renders one key segment for a path: bare keys as they are, anything
// else quoted.
func keySeg(k string) string {
	if k != "" && isBare(k) {
		return k
	}
	return quoteTOML(k)
}

func isBare(k string) bool {
	for i := 0; i < len(k); i++ {
		if !isBareByte(k[i]) {
			return false
		}
	}
	return true
}

func isBareByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func joinPath(prefix, key string) string {
	if prefix == "" {
		return keySeg(key)
	}
	return prefix + "." + keySeg(key)
}

func indexPath(p string, i int) string { return p + "[" + strconv.Itoa(i) + "]" }

type scanner struct {
	s     []byte
	pos   int
	line  int
	lines map[string]int
	aot   map[string]int // array-of-tables path -> number of elements so far
}

func locate(data []byte) *locator {
	sc := &scanner{s: data, line: 1, lines: map[string]int{}, aot: map[string]int{}}
	sc.run()
	return &locator{lines: sc.lines}
}

func (sc *scanner) rec(path string, line int) {
	if _, ok := sc.lines[path]; !ok {
		sc.lines[path] = line
	}
}

func (sc *scanner) peek(off int) byte {
	if sc.pos+off < len(sc.s) {
		return sc.s[sc.pos+off]
	}
	return 0
}

func (sc *scanner) eof() bool { return sc.pos >= len(sc.s) }

func (sc *scanner) skipSpace() {
	for !sc.eof() && (sc.s[sc.pos] == ' ' || sc.s[sc.pos] == '\t') {
		sc.pos++
	}
}

// skipToEOL moves to the newline ending the current line (not past it).
func (sc *scanner) skipToEOL() {
	for !sc.eof() && sc.s[sc.pos] != '\n' {
		sc.pos++
	}
}

// skipBlank skips spaces, tabs, newlines and comments (inside arrays).
func (sc *scanner) skipBlank() {
	for !sc.eof() {
		switch sc.s[sc.pos] {
		case ' ', '\t', '\r':
			sc.pos++
		case '\n':
			sc.pos++
			sc.line++
		case '#':
			sc.skipToEOL()
		default:
			return
		}
	}
}

func (sc *scanner) run() {
	table := ""
	for !sc.eof() {
		start := sc.pos
		sc.skipSpace()
		switch c := sc.peek(0); {
		case c == '\n':
			sc.pos++
			sc.line++
			continue
		case c == '#' || c == '\r':
			sc.skipToEOL()
		case c == '[':
			if t, ok := sc.header(); ok {
				table = t
			}
			sc.skipToEOL()
		default:
			line := sc.line
			keys, ok := sc.key()
			if ok {
				sc.skipSpace()
				ok = sc.peek(0) == '='
			}
			if ok {
				sc.pos++
				p := table
				for _, k := range keys {
					p = joinPath(p, k)
					sc.rec(p, line)
				}
				sc.skipSpace()
				sc.value(p, 0)
			}
			sc.skipToEOL()
		}
		if sc.pos == start { // always make progress
			sc.pos++
		}
	}
}

// header parses "[a.b]" or "[[a.b]]" at pos and returns the table path.
func (sc *scanner) header() (string, bool) {
	line := sc.line
	sc.pos++
	array := false
	if sc.peek(0) == '[' {
		array = true
		sc.pos++
	}
	sc.skipSpace()
	keys, ok := sc.key()
	if !ok {
		return "", false
	}
	sc.skipSpace()
	if sc.peek(0) != ']' || array && sc.peek(1) != ']' {
		return "", false
	}
	sc.pos++
	if array {
		sc.pos++
	}
	p := ""
	for i, k := range keys {
		p = joinPath(p, k)
		if array && i == len(keys)-1 {
			sc.rec(p, line)
			n := sc.aot[p]
			sc.aot[p] = n + 1
			p = indexPath(p, n)
		} else if n, ok := sc.aot[p]; ok {
			p = indexPath(p, n-1)
		}
		sc.rec(p, line)
	}
	return p, true
}

// key parses a dotted key (bare or quoted segments) at pos.
func (sc *scanner) key() ([]string, bool) {
	var keys []string
	for {
		sc.skipSpace()
		var k string
		switch c := sc.peek(0); {
		case c == '"':
			s, ok := sc.basicString()
			if !ok {
				return nil, false
			}
			k = s
		case c == '\'':
			s, ok := sc.literalString()
			if !ok {
				return nil, false
			}
			k = s
		case isBareByte(c):
			st := sc.pos
			for !sc.eof() && isBareByte(sc.s[sc.pos]) {
				sc.pos++
			}
			k = string(sc.s[st:sc.pos])
		default:
			return nil, false
		}
		keys = append(keys, k)
		sc.skipSpace()
		if sc.peek(0) != '.' {
			return keys, true
		}
		sc.pos++
	}
}

// basicString parses a one-line "..." string with escapes at pos.
func (sc *scanner) basicString() (string, bool) {
	sc.pos++
	var b strings.Builder
	for !sc.eof() {
		c := sc.s[sc.pos]
		switch c {
		case '"':
			sc.pos++
			return b.String(), true
		case '\n':
			return "", false
		case '\\':
			sc.pos++
			e := sc.peek(0)
			sc.pos++
			switch e {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case 'e':
				b.WriteByte(0x1b)
			case 'u', 'U':
				n := 4
				if e == 'U' {
					n = 8
				}
				if sc.pos+n > len(sc.s) {
					return "", false
				}
				v, err := strconv.ParseUint(string(sc.s[sc.pos:sc.pos+n]), 16, 32)
				if err != nil {
					return "", false
				}
				sc.pos += n
				b.WriteRune(rune(v))
			case 'x':
				if sc.pos+2 > len(sc.s) {
					return "", false
				}
				v, err := strconv.ParseUint(string(sc.s[sc.pos:sc.pos+2]), 16, 8)
				if err != nil {
					return "", false
				}
				sc.pos += 2
				b.WriteRune(rune(v))
			case '\n':
				return "", false
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
			sc.pos++
		}
	}
	return "", false
}

// literalString parses a one-line '...' string at pos.
func (sc *scanner) literalString() (string, bool) {
	sc.pos++
	st := sc.pos
	for !sc.eof() {
		switch sc.s[sc.pos] {
		case '\'':
			s := string(sc.s[st:sc.pos])
			sc.pos++
			return s, true
		case '\n':
			return "", false
		}
		sc.pos++
	}
	return "", false
}

// multiline skips a multi-line string (three double or three single quotes)
// at pos, counting lines.
func (sc *scanner) multiline(q byte) {
	sc.pos += 3
	for !sc.eof() {
		c := sc.s[sc.pos]
		switch {
		case c == '\\' && q == '"':
			sc.pos++
			if sc.peek(0) == '\n' {
				sc.line++
			}
			sc.pos++
		case c == '\n':
			sc.line++
			sc.pos++
		case c == q && sc.peek(1) == q && sc.peek(2) == q:
			sc.pos += 3
			// Up to two more quotes may end the content: """a""""" is `a""`.
			for i := 0; i < 2 && sc.peek(0) == q; i++ {
				sc.pos++
			}
			return
		default:
			sc.pos++
		}
	}
}

// value skips the value at pos, recording the keys and elements inside it
// under path.
func (sc *scanner) value(path string, depth int) {
	if depth > maxLocateDepth {
		return
	}
	switch c := sc.peek(0); {
	case c == '"' || c == '\'':
		if sc.peek(1) == c && sc.peek(2) == c {
			sc.multiline(c)
		} else if c == '"' {
			sc.basicString()
		} else {
			sc.literalString()
		}
	case c == '[':
		sc.pos++
		for i := 0; ; i++ {
			sc.skipBlank()
			if sc.eof() || sc.peek(0) == ']' {
				sc.pos++
				return
			}
			p := indexPath(path, i)
			sc.rec(p, sc.line)
			before := sc.pos
			sc.value(p, depth+1)
			sc.skipBlank()
			if sc.peek(0) == ',' {
				sc.pos++
			} else if sc.peek(0) != ']' || sc.pos == before {
				return
			}
		}
	case c == '{':
		sc.pos++
		for {
			sc.skipBlank()
			if sc.eof() || sc.peek(0) == '}' {
				sc.pos++
				return
			}
			line := sc.line
			keys, ok := sc.key()
			if !ok {
				return
			}
			sc.skipSpace()
			if sc.peek(0) != '=' {
				return
			}
			sc.pos++
			p := path
			for _, k := range keys {
				p = joinPath(p, k)
				sc.rec(p, line)
			}
			sc.skipBlank()
			sc.value(p, depth+1)
			sc.skipBlank()
			if sc.peek(0) == ',' {
				sc.pos++
			} else if sc.peek(0) != '}' {
				return
			}
		}
	default:
		for !sc.eof() {
			switch sc.s[sc.pos] {
			case ',', ']', '}', '#', '\n', '\r':
				return
			}
			sc.pos++
		}
	}
}

// quoteTOML renders s as a TOML basic string.
func quoteTOML(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\uFFFD`)
		case r < 0x20 || r == 0x7f:
			b.WriteString(`\u`)
			h := strconv.FormatUint(uint64(r), 16)
			b.WriteString(strings.Repeat("0", 4-len(h)))
			b.WriteString(h)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	b.WriteByte('"')
	return b.String()
}
