package config

import (
	"reflect"
	"testing"
)

const diffBase = `
[nodes.a]
replication = "10.0.0.1:7777"
[nodes.b]
replication = "10.0.0.2:7777"
[resources.r]
disk = { a = "/dev/a", b = "/dev/b" }
[resources.s]
disk = { a = "/dev/s" }
[[exports.aoe]]
resource = "r"
shelf = 1
slot = 1
interfaces = ["eth0"]
[[exports.nbd]]
resource = "r"
`

func TestDiff(t *testing.T) {
	old := mustParse(t, diffBase)
	for _, tc := range []struct {
		name string
		doc  string
		want []string
	}{
		{"same", diffBase, nil},
		{"add node", diffBase + "[nodes.c]\nreplication = \"10.0.0.3:7777\"\n", []string{"node c added"}},
		{"modify node", `secret_file = "/s"` + diffBase + "[nodes.c]\nreplication = \"10.0.0.3:7777\"\n", []string{"secret_file modified", "node c added"}},
		{"resource fields", diffBase + "[resources.t]\ndisk = { b = \"/dev/t\" }\n[resources.r.connect]\na = [\"b\"]\n", []string{"resource r modified: connect", "resource t added"}},
		{"resource removed, aoe moved", `
[nodes.a]
replication = "10.0.0.1:7777"
[nodes.b]
replication = "10.0.0.9:7777"
state_dir = "/st"
[resources.r]
disk = { a = "/dev/a", b = "/dev/b2" }
size = "1G"
primary = "b"
sync = true
[[exports.aoe]]
resource = "r"
shelf = 1
slot = 2
interfaces = ["eth0"]
[[exports.nbd]]
resource = "r"
read_only = true
[[exports.nbd]]
resource = "r"
name = "r2"
`, []string{
			"node b modified: control, replication, state_dir",
			"resource r modified: disk, primary, size, sync",
			"resource s removed",
			"aoe export 1.1 removed",
			"aoe export 1.2 added",
			"nbd export 0.0.0.0:10809/r modified: read_only",
			"nbd export 0.0.0.0:10809/r2 added",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range Diff(old, mustParse(t, tc.doc)) {
				got = append(got, c.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Diff =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestDiffNil(t *testing.T) {
	c := mustParse(t, diffBase)
	var added, removed []string
	for _, ch := range Diff(nil, c) {
		if ch.Kind != Added {
			t.Errorf("Diff(nil, c) has %v", ch)
		}
		added = append(added, ch.String())
	}
	for _, ch := range Diff(c, nil) {
		if ch.Kind != Removed {
			t.Errorf("Diff(c, nil) has %v", ch)
		}
		removed = append(removed, ch.String())
	}
	want := []string{"node a added", "node b added", "resource r added", "resource s added", "aoe export 1.1 added", "nbd export 0.0.0.0:10809/r added"}
	if !reflect.DeepEqual(added, want) {
		t.Errorf("Diff(nil, c) = %q", added)
	}
	if len(removed) != len(want) {
		t.Errorf("Diff(c, nil) = %q", removed)
	}
	if Diff(nil, nil) != nil {
		t.Errorf("Diff(nil, nil) not empty")
	}
	if s := ChangeKind(9).String(); s != "ChangeKind(9)" {
		t.Errorf("ChangeKind(9) = %q", s)
	}
}
