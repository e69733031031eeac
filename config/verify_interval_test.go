package config

import (
	"strings"
	"testing"
	"time"
)

func TestVerifyInterval(t *testing.T) {
	base := "[nodes.alpha]\nreplication = \"10.0.0.1:7777\"\n[nodes.beta]\nreplication = \"10.0.0.2:7777\"\n" +
		"[resources.data]\ndisk = { alpha = \"/dev/a\", beta = \"/dev/b\" }\n"
	for _, tc := range []struct {
		line string
		want time.Duration
		err  string
	}{
		{"", 0, ""},
		{`verify_interval = "24h"`, 24 * time.Hour, ""},
		{`verify_interval = 0`, 0, ""},
		{`verify_interval = 3600`, time.Hour, ""},
		{`verify_interval = "10s"`, 0, `t.toml:7: resources.data.verify_interval: 10s is too often; use at least 1m0s (or 0: never), for example: verify_interval = "24h"`},
		{`verify_interval = "daily"`, 0, `t.toml:7: resources.data.verify_interval: "daily" is not a duration`},
	} {
		c, err := Parse("t.toml", []byte(base+tc.line+"\n"), "/etc")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.line, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.line, err)
			continue
		}
		if got := c.Resources["data"].VerifyInterval; got != tc.want {
			t.Errorf("%s: VerifyInterval %v, want %v", tc.line, got, tc.want)
		}
		// It survives Marshal and parses back the same.
		c2, err := Parse("t.toml", c.Marshal(), "/etc")
		if err != nil || c2.Resources["data"].VerifyInterval != tc.want {
			t.Errorf("%s: marshalled and parsed again: %v, %v", tc.line, err, c2.Resources["data"].VerifyInterval)
		}
	}
}
