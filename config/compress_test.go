package config

import (
	"slices"
	"strings"
	"testing"
)

func TestCompress(t *testing.T) {
	base := "[nodes.alpha]\nreplication = \"10.0.0.1:7777\"\n[nodes.beta]\nreplication = \"10.0.0.2:7777\"\n" +
		"[resources.data]\ndisk = { alpha = \"/dev/a\", beta = \"/dev/b\" }\n"
	var prev *Config
	for _, tc := range []struct {
		line string
		want string
		err  string
	}{
		{"", "", ""},
		{`compress = "zstd"`, CompressZstd, ""},
		{`compress = "off"`, "", ""},
		{`compress = "gzip"`, "", `t.toml:7: resources.data.compress: "gzip" is not a compression; use "off" or "zstd", for example: compress = "zstd"`},
		{`compress = true`, "", `t.toml:7: resources.data.compress: must be a string`},
	} {
		c, err := Parse("t.toml", []byte(base+tc.line+"\n"), "/etc")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.line, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		if got := c.Resources["data"].Compress; got != tc.want {
			t.Errorf("%s: Compress %q, want %q", tc.line, got, tc.want)
		}
		c2, err := Parse("t.toml", c.Marshal(), "/etc")
		if err != nil || c2.Resources["data"].Compress != tc.want {
			t.Errorf("%s: marshalled and parsed again: %v, %v", tc.line, err, c2.Resources["data"].Compress)
		}
		// A change is a field of the resource in Diff (reload decides).
		if prev != nil {
			changed := slices.ContainsFunc(Diff(prev, c), func(ch Change) bool { return slices.Contains(ch.Fields, "compress") })
			if changed != (prev.Resources["data"].Compress != tc.want) {
				t.Errorf("%s: Diff reports compress changed %v", tc.line, changed)
			}
		}
		prev = c
	}
}
