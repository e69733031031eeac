package config

import (
	"errors"
	"os"
	"reflect"
	"testing"
)

// FuzzParse: no input panics; a failure is a non-empty Errors naming the
// file; a success marshals to TOML that parses to an equal Config (so a
// Config that parses re-validates).
func FuzzParse(f *testing.F) {
	f.Add([]byte(designSketch))
	f.Add([]byte(diffBase))
	if b, err := os.ReadFile("testdata/example.toml"); err == nil {
		f.Add(b)
	}
	for _, tc := range errCases {
		f.Add([]byte(tc.doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data, "/etc/tharsis")
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for i, e := range errs {
				if e.File != "f.toml" || e.Line < 0 || e.Msg == "" {
					t.Fatalf("bad error %+v", e)
				}
				if i > 0 && errs[i-1].Line > e.Line {
					t.Fatalf("errors not sorted: %v", err)
				}
			}
			if c != nil {
				t.Fatal("Config returned with an error")
			}
			return
		}
		out := c.Marshal()
		c2, err := Parse("f.toml", out, "/etc/tharsis")
		if err != nil {
			t.Fatalf("marshalled config does not re-validate: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip differs:\n%s\n---\n%s", out, c2.Marshal())
		}
	})
}

// FuzzLocate: the locator never panics or hangs, whatever the input.
func FuzzLocate(f *testing.F) {
	f.Add([]byte(designSketch), "resources.data.disk.alpha")
	f.Add([]byte("a = [{b = \"\"\"x\n\"\"\"}]\n[[c.d]]\n"), "c.d[0]")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		l := locate(data)
		if n := l.line(path); n < 0 {
			t.Fatalf("line(%q) = %d", path, n)
		}
	})
}

// FuzzParseSize: accepted sizes are non-negative and survive FormatSize.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512", "100GiB", "10 GB", "4k", "1.5G", "-1", "8EiB", "7EiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
		}
	})
}
