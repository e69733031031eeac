package config

import (
	"reflect"
	"testing"
)

// metrics_listen's errors join the other validation errors (TestParseErrors
// and the fuzz seeds).
func init() {
	errCases = append(errCases,
		errCase{"metrics not host:port", base + "[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\nmetrics_listen = \"9750\"\n",
			[]string{`t.toml:9: nodes.gamma.metrics_listen: "9750" is not host:port`}},
		errCase{"metrics port", "[nodes.a]\nreplication = \"10.0.0.1:7777\"\nmetrics_listen = \"10.0.0.1:0\"\n",
			[]string{`t.toml:3: nodes.a.metrics_listen: port "0" in "10.0.0.1:0" must be a number from 1 to 65535`}},
		errCase{"metrics type", "[nodes.a]\nreplication = \"10.0.0.1:7777\"\nmetrics_listen = 9750\n",
			[]string{`t.toml:3: nodes.a.metrics_listen: must be a string, not an integer; for example: metrics_listen = "127.0.0.1:9750"`}},
		errCase{"metrics on replication port", "[nodes.a]\nreplication = \"10.0.0.1:7777\"\nmetrics_listen = \":7777\"\n",
			[]string{`t.toml:3: nodes.a.metrics_listen: :7777 collides with the node's replication address 10.0.0.1:7777`}},
		errCase{"metrics twice", "[nodes.a]\nreplication = \"127.0.0.1:7001\"\nmetrics_listen = \"127.0.0.1:9750\"\n[nodes.b]\nreplication = \"127.0.0.1:7002\"\nmetrics_listen = \"127.0.0.1:9750\"\n",
			[]string{`t.toml:6: nodes.b.metrics_listen: 127.0.0.1:9750 is also the metrics_listen of node a (line 3)`}},
		errCase{"metrics on nbd port", "[nodes.alpha]\nreplication = \"10.0.0.1:7777\"\nmetrics_listen = \"0.0.0.0:10809\"\n" +
			"[resources.data]\ndisk = { alpha = \"/dev/a\" }\n[[exports.nbd]]\nresource = \"data\"\nlisten = \"10.0.0.1:10809\"\n",
			[]string{`t.toml:3: nodes.alpha.metrics_listen: 0.0.0.0:10809 collides with the NBD listen address 10.0.0.1:10809 of exports.nbd[0] (line 8)`}},
	)
}

func TestMetricsListen(t *testing.T) {
	doc := "[nodes.a]\nreplication = \"127.0.0.1:7001\"\nmetrics_listen = \"127.0.0.1:9750\"\n" +
		"[nodes.b]\nreplication = \"127.0.0.1:7002\"\nmetrics_listen = \":9750\"\n" +
		"[nodes.c]\nreplication = \"127.0.0.1:7003\"\n"
	c := mustParse(t, doc)
	for node, want := range map[string]string{"a": "127.0.0.1:9750", "b": ":9750", "c": ""} {
		if got := c.Nodes[node].MetricsListen; got != want {
			t.Errorf("node %s: metrics_listen %q, want %q", node, got, want)
		}
	}
	// Marshal keeps it, and Diff shows a change as a node field.
	again := mustParse(t, string(c.Marshal()))
	if !reflect.DeepEqual(again.Nodes, c.Nodes) {
		t.Errorf("nodes after Marshal and Parse: %+v, want %+v", again.Nodes, c.Nodes)
	}
	moved := mustParse(t, doc+"metrics_listen = \"127.0.0.1:9751\"\n")
	var got []string
	for _, ch := range Diff(c, moved) {
		got = append(got, ch.String())
	}
	if want := []string{"node c modified: metrics_listen"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
}
