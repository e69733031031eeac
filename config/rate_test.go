package config

import (
	"strings"
	"testing"
)

func TestRateLimits(t *testing.T) {
	base := "[nodes.alpha]\nreplication = \"10.0.0.1:7777\"\n[resources.data]\ndisk = { alpha = \"/dev/a\" }\n[limits]\n"
	for _, tc := range []struct {
		line        string
		sync, fetch int64
		wantErr     string
	}{
		{"", 0, 0, ""},
		{`sync_rate = "100MiB"`, 100 << 20, 0, ""},
		{`fetch_rate = "50MiB"`, 0, 50 << 20, ""},
		{`sync_rate = 0`, 0, 0, ""},
		{`sync_rate = "1KiB"`, 0, 0, `limits.sync_rate: 1 KiB per second is too little`},
		{`fetch_rate = "fast"`, 0, 0, `limits.fetch_rate`},
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
		if c.Limits.SyncRate != tc.sync || c.Limits.FetchRate != tc.fetch {
			t.Errorf("%s: sync %d fetch %d", tc.line, c.Limits.SyncRate, c.Limits.FetchRate)
		}
		c2, err := Parse("t.toml", c.Marshal(), "/etc")
		if err != nil || c2.Limits.SyncRate != tc.sync || c2.Limits.FetchRate != tc.fetch {
			t.Errorf("%s: marshalled and parsed again: %v\n%s", tc.line, err, c.Marshal())
		}
	}
}
