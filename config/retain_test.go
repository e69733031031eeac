package config

import (
	"strings"
	"testing"
	"time"
)

func TestRetainLimits(t *testing.T) {
	base := "[nodes.alpha]\nreplication = \"10.0.0.1:7777\"\n[nodes.beta]\nreplication = \"10.0.0.2:7777\"\n" +
		"[resources.data]\ndisk = { alpha = \"/dev/a\", beta = \"/dev/b\" }\nsegment_size = \"64MiB\"\n"
	for _, tc := range []struct {
		line    string
		max     int64
		maxAge  time.Duration
		wantErr string
	}{
		{"", 0, 0, ""},
		{`retain_max = "10GiB"`, 10 << 30, 0, ""},
		{`retain_max_age = "72h"`, 0, 72 * time.Hour, ""},
		{`retain_max = "100MiB"`, 0, 0, `resources.data.retain_max: 100 MiB is less than two log segments (128 MiB)`},
		{`retain_max_age = "5s"`, 0, 0, `resources.data.retain_max_age: 5s is too short`},
		{`retain_max = "lots"`, 0, 0, `resources.data.retain_max`},
	} {
		c, err := Parse("t.toml", []byte(base+tc.line+"\n"), "/etc")
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.line, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.line, err)
			continue
		}
		r := c.Resources["data"]
		if r.RetainMax != tc.max || r.RetainMaxAge != tc.maxAge {
			t.Errorf("%s: retain_max %d, retain_max_age %v", tc.line, r.RetainMax, r.RetainMaxAge)
		}
		c2, err := Parse("t.toml", c.Marshal(), "/etc")
		if err != nil || c2.Resources["data"].RetainMax != tc.max || c2.Resources["data"].RetainMaxAge != tc.maxAge {
			t.Errorf("%s: marshalled and parsed again: %v", tc.line, err)
		}
	}
}
