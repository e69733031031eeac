package config

import (
	"testing"

	"github.com/BurntSushi/toml"
)

func TestLocate(t *testing.T) {
	doc := `# comment [not.a.table]
top = 1
s = """
[fake.table]
x = 1
"""
lit = '''
[also.fake]'''
[nodes.alpha]  # trailing comment
replication = "h:1"
[ nodes . "be ta" ]
state_dir = 'x'
[resources.data]
disk = { alpha = "/a", beta = "/b" }
connect = { beta = [
  "alpha",   # first
  "gamma",
] }
a.b.c = 2
"quoted.key" = 3
[[exports.aoe]]
shelf = 1
[[exports.aoe]]
shelf = 2
[exports.aoe.sub]
k = 1
[[exports.nbd]]
name = "x"
[exports]
aoe2 = [ { shelf = 1 },
  { shelf = 2, slot = 3 } ]
`
	l := locate([]byte(doc))
	for _, tc := range []struct {
		path string
		want int
	}{
		{"top", 2},
		{"s", 3},
		{"fake", 0},
		{"fake.table", 0},
		{"also", 0},
		{"lit", 7},
		{"nodes", 9},
		{"nodes.alpha", 9},
		{"nodes.alpha.replication", 10},
		{"nodes.alpha.missing", 9}, // falls back to the table
		{`nodes."be ta"`, 11},
		{`nodes."be ta".state_dir`, 12},
		{"resources.data", 13},
		{"resources.data.disk", 14},
		{"resources.data.disk.alpha", 14},
		{"resources.data.disk.beta", 14},
		{"resources.data.connect.beta", 15},
		{"resources.data.connect.beta[0]", 16},
		{"resources.data.connect.beta[1]", 17},
		{"resources.data.connect.beta[2]", 15}, // no such element: the list
		{"resources.data.a", 19},
		{"resources.data.a.b.c", 19},
		{`resources.data."quoted.key"`, 20},
		{"exports", 21},
		{"exports.aoe", 21},
		{"exports.aoe[0]", 21},
		{"exports.aoe[0].shelf", 22},
		{"exports.aoe[1]", 23},
		{"exports.aoe[1].shelf", 24},
		{"exports.aoe[1].sub", 25},
		{"exports.aoe[1].sub.k", 26},
		{"exports.nbd[0].name", 28},
		{"exports.nbd[0].listen", 27},
		{"exports.aoe2[0].shelf", 30},
		{"exports.aoe2[1]", 31},
		{"exports.aoe2[1].slot", 31},
		{"nothing", 0},
	} {
		if got := l.line(tc.path); got != tc.want {
			t.Errorf("line(%q) = %d, want %d", tc.path, got, tc.want)
		}
	}
}

func TestLocateParentFallback(t *testing.T) {
	// A table created only by a deeper header gets the line of its first child.
	l := locate([]byte("\n\n[a.b]\nx = 1\n[a.c]\n"))
	for path, want := range map[string]int{"a": 3, "a.b": 3, "a.c": 5, "a.c.y": 5, "a.b.x": 4} {
		if got := l.line(path); got != want {
			t.Errorf("line(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestParentPath(t *testing.T) {
	for in, want := range map[string]string{
		"a":                  "",
		"a.b":                "a",
		"a[1]":               "a",
		"a[1].b":             "a[1]",
		`a."x.y"`:            "a",
		`a."x\".y".z`:        `a."x\".y"`,
		"exports.aoe[0].sub": "exports.aoe[0]",
	} {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLocateGarbage(t *testing.T) {
	// Never panics or loops on input that is not TOML.
	for _, doc := range []string{"", "[", "[[", "[a", "a", "a =", "a = [", "a = {", `a = "`, `a = """`, "= 1", "a = [[[[[[", "\"\\u12", "a = {b = {c = [1, {d = 2}]}}", "a.=1", "[a.]"} {
		locate([]byte(doc))
	}
}

func TestLocateQuotedKeys(t *testing.T) {
	doc := "[t]\n\"a\\\"b\" = 1\n\"\\u0041\\tZ\" = 2\n'lit\\' = 3\n\"\\U0001F600\" = 4\nm = '''x\ny''' # c\nn = \"\"\"a\\\n  b\"\"\"\"\"\no = 5\n"
	l := locate([]byte(doc))
	for path, want := range map[string]int{
		`t."a\"b"`:  2,
		`t."A\tZ"`:  3,
		`t."lit\\"`: 4,
		`t."😀"`:     5,
		"t.m":       6,
		"t.n":       8,
		"t.o":       10,
	} {
		if got := l.line(path); got != want {
			t.Errorf("line(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestQuoteTOML(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "nl\nand\ttab\r", "ctl\x01\x1f\x7f", "é ☃ 😀"} {
		q := quoteTOML(s)
		var v struct{ K string }
		if _, err := toml.Decode("K = "+q, &v); err != nil || v.K != s {
			t.Errorf("quoteTOML(%q) = %s decodes to %q, %v", s, q, v.K, err)
		}
	}
	if got := quoteTOML("bad\xffutf8"); got != `"bad\uFFFDutf8"` {
		t.Errorf("quoteTOML(invalid UTF-8) = %s", got)
	}
}
