package config

import (
	"errors"
	"strings"
	"testing"
)

// base is a valid six-line prefix: two nodes and one resource. Cases append
// to it, so their own first line is line 7.
const base = `[nodes.alpha]
replication = "10.0.0.1:7777"
[nodes.beta]
replication = "10.0.0.2:7777"
[resources.data]
disk = { alpha = "/dev/a", beta = "/dev/b" }
`

type errCase struct {
	name string
	doc  string
	want []string // substrings of the error text, each including "t.toml:LINE: KEY"
}

// errCases covers every validation error. They also seed FuzzParse.
var errCases = []errCase{
	// Syntax.
	{"syntax", base + "[[exports.nbd]\n", []string{"t.toml:7: TOML syntax error"}},
	{"syntax duplicate key", base + "[nodes.alpha]\n", []string{"t.toml:7: TOML syntax error"}},
	{"syntax bad value", "[nodes.a]\nreplication = 10.0.0.1:7777\n", []string{"t.toml:2: TOML syntax error"}},

	// Unknown keys, with suggestions.
	{"unknown top", "secret_fil = \"x\"\n" + base, []string{`t.toml:1: secret_fil: unknown key in the top level; did you mean "secret_file"?`}},
	{"unknown top table", base + "[node.gamma]\nreplication = \"10.0.0.3:7777\"\n", []string{`t.toml:7: node: unknown key in the top level; did you mean "nodes"?`}},
	{"unknown node key", base + "[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\nstatedir = \"/x\"\n", []string{`t.toml:9: nodes.gamma.statedir: unknown key in [nodes.NAME]; did you mean "state_dir"?`}},
	{"unknown resource key", base + "sise = \"1GiB\"\n", []string{`t.toml:7: resources.data.sise: unknown key in [resources.NAME]; did you mean "size"?`}},
	{"unknown exports key", base + "[exports]\nnbdd = []\n", []string{`t.toml:8: exports.nbdd: unknown key in [exports]; did you mean "nbd"?`}},
	{"unknown aoe key", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\nbuffcount = 2\n", []string{`t.toml:12: exports.aoe[0].buffcount: unknown key in [[exports.aoe]]; did you mean "bufcnt"?`}},
	{"unknown nbd key", base + "[[exports.nbd]]\nresource = \"data\"\nreadonly = true\n", []string{`t.toml:9: exports.nbd[0].readonly: unknown key in [[exports.nbd]]; did you mean "read_only"?`}},
	{"key in wrong table", "size = \"1GiB\"\n" + base, []string{`t.toml:1: size: unknown key in the top level; "size" belongs in a [resources.NAME] table`}},
	{"unknown key no suggestion", base + "colour = \"blue\"\n", []string{`t.toml:7: resources.data.colour: unknown key in [resources.NAME]; valid keys here: disk, size`}},
	{"unknown dotted key", base + "foo.bar = 1\n", []string{`t.toml:7: resources.data.foo: unknown key`}},

	// Wrong types.
	{"type replication", "[nodes.a]\nreplication = 7777\n", []string{`t.toml:2: nodes.a.replication: must be a string, not an integer; for example: replication = "10.0.0.1:7777"`}},
	{"type node", "nodes.a = 1\n", []string{`t.toml:1: nodes.a: must be a table, not an integer; write it as [nodes.a]`}},
	{"type nodes", "nodes = []\n", []string{`t.toml:1: nodes: must be a table, not an array`}},
	{"type shelf", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = \"1\"\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:9: exports.aoe[0].shelf: must be an integer, not a string; for example: shelf = 1`}},
	{"type float slot", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1.0\ninterfaces = [\"eth0\"]\n", []string{`t.toml:10: exports.aoe[0].slot: must be an integer, not a float`}},
	{"type bool", base + "replicated = \"yes\"\n", []string{`t.toml:7: resources.data.replicated: must be true or false, not a string`}},
	{"type disk", "[nodes.a]\nreplication = \"h:1\"\n[resources.r]\ndisk = \"/dev/a\"\n", []string{`t.toml:4: resources.r.disk: must be a table, not a string; for example: disk = {`}},
	{"type disk path", "[nodes.a]\nreplication = \"h:1\"\n[resources.r]\ndisk = { a = 1 }\n", []string{`t.toml:4: resources.r.disk.a: must be a string (the path of the disk on node a), not an integer`}},
	{"type size", base + "size = 1.5\n", []string{`t.toml:7: resources.data.size: must be a size string or a number of bytes, not a float`}},
	{"type interfaces", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = \"eth0\"\n", []string{`t.toml:11: exports.aoe[0].interfaces: must be an array of strings, not a string`}},
	{"type interfaces element", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\n  \"eth0\",\n  7,\n]\n", []string{`t.toml:13: exports.aoe[0].interfaces[1]: must be a string, not an integer`}},
	{"type aoe single table", base + "[exports.aoe]\nresource = \"data\"\n", []string{`t.toml:7: exports.aoe: must be an array of tables: write [[exports.aoe]] (double brackets)`}},
	{"type aoe element", base + "[exports]\naoe = [1]\n", []string{`t.toml:8: exports.aoe[0]: must be a table, not an integer`}},
	{"type exports", base + "[[exports]]\n", []string{`t.toml:7: exports: must be a table, not an array of tables`}},
	{"type connect", base + "connect = { beta = \"alpha\" }\n", []string{`t.toml:7: resources.data.connect.beta: must be an array of strings, not a string`}},
	{"type secret", "secret_file = true\n" + base, []string{`t.toml:1: secret_file: must be a string, not a boolean`}},
	{"type date", base + "sync = 1979-05-27\n", []string{`t.toml:7: resources.data.sync: must be true or false, not a date/time`}},

	// Synchronous acknowledgement.
	{"ack negative", base + "ack_secondaries = -1\n", []string{`t.toml:7: resources.data.ack_secondaries: -1 is negative`}},
	{"ack too many", base + "ack_secondaries = 2\n", []string{`t.toml:7: resources.data.ack_secondaries: 2 is more than the 1 other node(s) holding resource "data": writes could never be acknowledged; use at most 1`}},
	{"ack not replicated", base + "replicated = false\nack_secondaries = 1\n", []string{`t.toml:8: resources.data.ack_secondaries: resource "data" is not replicated`}},
	{"ack cascaded only", "[nodes.alpha]\nreplication = \"h:1\"\n[nodes.beta]\nreplication = \"h:2\"\n[nodes.gamma]\nreplication = \"h:3\"\n[resources.data]\ndisk = { alpha = \"/a\", beta = \"/b\", gamma = \"/g\" }\nprimary = \"alpha\"\nconnect = { gamma = [\"beta\"] }\nack_secondaries = 2\n",
		[]string{`t.toml:11: resources.data.ack_secondaries: 2 is more than the 1 node(s) that fetch from the primary alpha directly`}},
	{"ack timeout zero", base + "ack_secondaries = 1\nack_timeout = \"0s\"\n", []string{`t.toml:8: resources.data.ack_timeout: 0s is not a wait; give a positive duration, or "forever"`}},
	{"ack timeout word", base + "ack_timeout = \"never\"\n", []string{`t.toml:7: resources.data.ack_timeout:`}},

	// Sizes.
	{"size unit", base + "size = \"10 XB\"\n", []string{`t.toml:7: resources.data.size: size "10 XB" has an unknown unit "XB"; use a whole number with an optional unit`}},
	{"size fraction", base + "size = \"1.5GiB\"\n", []string{`t.toml:7: resources.data.size: size "1.5GiB" is not a whole number; use a smaller unit`}},
	{"size negative string", base + "size = \"-1G\"\n", []string{`t.toml:7: resources.data.size: size "-1G" is negative`}},
	{"size negative int", base + "size = -512\n", []string{`t.toml:7: resources.data.size: -512 is negative`}},
	{"size zero", base + "size = \"0\"\n", []string{`t.toml:7: resources.data.size: must be more than 0; leave size out to use the size of the smallest disk`}},
	{"size alignment", base + "size = \"1KB\"\n", []string{`t.toml:7: resources.data.size: 1000 bytes is not a multiple of 512; round it, for example to 1 KiB`}},
	{"size overflow", base + "size = \"9000000EiB\"\n", []string{`t.toml:7: resources.data.size: size "9000000EiB" is too large`}},
	{"size empty", base + "size = \"\"\n", []string{`t.toml:7: resources.data.size: empty size`}},
	{"segment_size small", base + "segment_size = \"512K\"\n", []string{`t.toml:7: resources.data.segment_size: 512 KiB is too small; use at least 1 MiB`}},
	{"apply_window small", base + "apply_window = \"64K\"\n", []string{`t.toml:7: resources.data.apply_window: 64 KiB is too small; use at least 1 MiB, for example: apply_window = "64MiB"`}},

	// Disks.
	{"no disk", base + "[resources.logs]\nsize = \"1G\"\n", []string{`t.toml:7: resources.logs.disk: missing: resource "logs" has no disk; name the disk of every node that holds it`}},
	{"empty disk", base + "[resources.logs]\ndisk = {}\n", []string{`t.toml:8: resources.logs.disk: lists no node: resource "logs" has no disk`}},
	{"disk unknown node", base + "[resources.logs]\ndisk = { alpha = \"/dev/l\", gamma = \"/dev/l\" }\n", []string{`t.toml:8: resources.logs.disk.gamma: unknown node "gamma"; disk can only name nodes defined as [nodes.NAME] (defined: alpha, beta)`}},
	{"disk unknown node suggestion", base + "[resources.logs]\ndisk = { alhpa = \"/dev/l\" }\n", []string{`t.toml:8: resources.logs.disk.alhpa: unknown node "alhpa" (did you mean "alpha"?)`}},
	{"disk empty path", base + "[resources.logs]\ndisk = { alpha = \"\" }\n", []string{`t.toml:8: resources.logs.disk.alpha: is empty; give the path of the disk on node alpha`}},
	{"disk shared", base + "[resources.logs]\ndisk = { alpha = \"/dev/a\" }\n", []string{`t.toml:8: resources.logs.disk.alpha: disk /dev/a on node alpha is also the disk of resource data`}},
	{"log_dir shared", base + "log_dir = \"/srv/log\"\n[resources.logs]\ndisk = { beta = \"/dev/l\" }\nlog_dir = \"/srv/log\"\n", []string{`t.toml:10: resources.logs.log_dir: log directory /srv/log on node beta is also used by resource data`}},
	{"log_dir empty", base + "log_dir = \"\"\n", []string{`t.toml:7: resources.data.log_dir: is empty`}},

	// Primary.
	{"primary unknown", base + "primary = \"gamma\"\n", []string{`t.toml:7: resources.data.primary: unknown node "gamma"; primary can only name nodes`}},
	{"primary without disk", base + "[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\n[resources.logs]\ndisk = { alpha = \"/dev/l\" }\nprimary = \"gamma\"\n", []string{`t.toml:11: resources.logs.primary: node "gamma" holds no disk of resource "logs", so it cannot be its primary; name one of alpha, or add a disk for gamma`}},

	// Connect.
	{"connect unknown value", base + "connect = { beta = [\"gamma\"] }\n", []string{`t.toml:7: resources.data.connect.beta[0]: unknown node "gamma"; connect can only name nodes`}},
	{"connect unknown key", base + "connect = { gamma = [\"alpha\"] }\n", []string{`t.toml:7: resources.data.connect.gamma: unknown node "gamma"`}},
	{"connect no disk value", base + "connect = { beta = [\"gamma\", \"alpha\"] }\n[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\n", []string{`t.toml:7: resources.data.connect.beta[0]: node "gamma" holds no disk of resource "data", so it takes no part in its replication`}},
	{"connect no disk key", base + "connect = { gamma = [\"alpha\"] }\n[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\n", []string{`t.toml:7: resources.data.connect.gamma: node "gamma" holds no disk of resource "data"`}},
	{"connect self", base + "connect = { beta = [\"alpha\", \"beta\"] }\n", []string{`t.toml:7: resources.data.connect.beta[1]: node "beta" lists itself`}},
	{"connect duplicate", base + "connect = { beta = [\"alpha\", \"alpha\"] }\n", []string{`t.toml:7: resources.data.connect.beta[1]: node "alpha" is listed twice`}},
	{"connect empty", base + "connect = { beta = [] }\n", []string{`t.toml:7: resources.data.connect.beta: is empty; list the nodes beta fetches data from`}},
	{"connect table form", base + "[resources.data.connect]\nbeta = [\n  \"alpha\",\n  \"zeta\",\n]\n", []string{`t.toml:10: resources.data.connect.beta[1]: unknown node "zeta"`}},

	// Nodes.
	{"no nodes", "", []string{`t.toml: nodes: no nodes defined; add a [nodes.NAME] table`}},
	{"no nodes empty table", "[nodes]\n", []string{`t.toml:1: nodes: no nodes defined`}},
	{"bad node name", "[nodes.Alpha]\nreplication = \"h:1\"\n", []string{`t.toml:1: nodes.Alpha: "Alpha" is not a valid node name; use 1 to 63 characters`}},
	{"bad node name quoted", "[nodes.\"a b\"]\nreplication = \"h:1\"\n", []string{`t.toml:1: nodes."a b": "a b" is not a valid node name`}},
	{"long node name", "[nodes." + strings.Repeat("a", 64) + "]\nreplication = \"h:1\"\n", []string{`is not a valid node name`}},
	{"bad resource name", base + "[resources._x]\ndisk = { alpha = \"/dev/x\" }\n", []string{`t.toml:7: resources._x: "_x" is not a valid resource name`}},
	{"missing replication", base + "[nodes.gamma]\nstate_dir = \"/x\"\n", []string{`t.toml:7: nodes.gamma.replication: missing; every node needs the host:port its peers reach it on`}},
	{"replication no port", "[nodes.a]\nreplication = \"10.0.0.1\"\n", []string{`t.toml:2: nodes.a.replication: "10.0.0.1" is not host:port`}},
	{"replication port 0", "[nodes.a]\nreplication = \"10.0.0.1:0\"\n", []string{`t.toml:2: nodes.a.replication: port "0" in "10.0.0.1:0" must be a number from 1 to 65535`}},
	{"replication port big", "[nodes.a]\nreplication = \"10.0.0.1:65536\"\n", []string{`t.toml:2: nodes.a.replication: port "65536"`}},
	{"replication port name", "[nodes.a]\nreplication = \"10.0.0.1:http\"\n", []string{`t.toml:2: nodes.a.replication: port "http"`}},
	{"replication wildcard", "[nodes.a]\nreplication = \"0.0.0.0:7777\"\n", []string{`t.toml:2: nodes.a.replication: "0.0.0.0:7777" has no specific host; peers connect to this address`}},
	{"replication empty host", "[nodes.a]\nreplication = \":7777\"\n", []string{`t.toml:2: nodes.a.replication: ":7777" has no specific host`}},
	{"replication bad host", "[nodes.a]\nreplication = \"bad_host!:7777\"\n", []string{`t.toml:2: nodes.a.replication: host "bad_host!" in "bad_host!:7777" is neither an IP address nor a valid hostname`}},
	{"replication duplicate", "[nodes.a]\nreplication = \"10.0.0.1:7777\"\n[nodes.b]\nreplication = \"10.0.0.1:7777\"\n", []string{`t.toml:4: nodes.b.replication: 10.0.0.1:7777 is also the replication address of node a (line 2)`}},
	{"state_dir empty", "[nodes.a]\nreplication = \"h:1\"\nstate_dir = \"\"\n", []string{`t.toml:3: nodes.a.state_dir: is empty`}},
	{"secret empty", "secret_file = \"\"\n" + base, []string{`t.toml:1: secret_file: is empty`}},
	{"control too long", "[nodes.a]\nreplication = \"h:1\"\ncontrol = \"/" + strings.Repeat("x", 120) + "\"\n", []string{`t.toml:3: nodes.a.control: control socket path "/xxx`, `is 121 bytes, but unix socket paths are limited to 107`}},
	{"default control too long", "[nodes.a]\nreplication = \"h:1\"\nstate_dir = \"/" + strings.Repeat("x", 100) + "\"\n", []string{`t.toml:3: nodes.a.state_dir: control socket path`}},

	// AoE exports.
	{"aoe unknown resource", base + "[[exports.aoe]]\nresource = \"dat\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:8: exports.aoe[0].resource: unknown resource "dat" (did you mean "data"?); define it as [resources.dat] or export one of: data`}},
	{"aoe missing resource", base + "[[exports.aoe]]\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:7: exports.aoe[0].resource: missing; every export names the resource it serves`}},
	{"aoe missing shelf slot interfaces", base + "[[exports.aoe]]\nresource = \"data\"\n", []string{`t.toml:7: exports.aoe[0].shelf: missing`, `t.toml:7: exports.aoe[0].slot: missing`, `t.toml:7: exports.aoe[0].interfaces: missing`}},
	{"aoe shelf broadcast", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 0xffff\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:9: exports.aoe[0].shelf: shelf 65535 (0xffff) is reserved for broadcast; use 0 to 65534`}},
	{"aoe shelf range", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 70000\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:9: exports.aoe[0].shelf: shelf 70000 is out of range; use 0 to 65534`}},
	{"aoe shelf negative", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = -1\nslot = 1\ninterfaces = [\"eth0\"]\n", []string{`t.toml:9: exports.aoe[0].shelf: shelf -1 is out of range`}},
	{"aoe slot broadcast", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 0xff\ninterfaces = [\"eth0\"]\n", []string{`t.toml:10: exports.aoe[0].slot: slot 255 (0xff) is reserved for broadcast; use 0 to 254`}},
	{"aoe slot range", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 256\ninterfaces = [\"eth0\"]\n", []string{`t.toml:10: exports.aoe[0].slot: slot 256 is out of range; use 0 to 254`}},
	{"aoe duplicate shelf.slot", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 2\ninterfaces = [\"eth0\"]\n[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 2\ninterfaces = [\"eth1\"]\n",
		[]string{`t.toml:14: exports.aoe[1].shelf: shelf.slot 1.2 is already used by exports.aoe[0] (line 9); give each AoE export its own shelf.slot`}},
	{"aoe interfaces empty", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = []\n", []string{`t.toml:11: exports.aoe[0].interfaces: is empty; name at least one Ethernet interface`}},
	{"aoe interface bad", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"\", \"a/b\", \"averyveryverylongname\"]\n", []string{`t.toml:11: exports.aoe[0].interfaces[0]: "" is not a valid interface name`, `exports.aoe[0].interfaces[1]: "a/b" is not`, `exports.aoe[0].interfaces[2]: "averyveryverylongname" is not`}},
	{"aoe interface duplicate", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\", \"eth0\"]\n", []string{`t.toml:11: exports.aoe[0].interfaces[1]: interface "eth0" is listed twice`}},
	{"aoe bad mac", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\nallow_macs = [\"00:11:22:33:44:55\", \"00:11:22:33:44\", \"00:00:00:00:fe:80:00:00\"]\n",
		[]string{`t.toml:12: exports.aoe[0].allow_macs[1]: "00:11:22:33:44" is not a 6-byte Ethernet MAC address; write it like 00:11:22:33:44:55`, `t.toml:12: exports.aoe[0].allow_macs[2]: "00:00:00:00:fe:80:00:00" is not a 6-byte`}},
	{"aoe bufcnt", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\nbufcnt = 0\n", []string{`t.toml:12: exports.aoe[0].bufcnt: 0 is out of range; use 1 to 65535`}},
	{"aoe bufcnt big", base + "[[exports.aoe]]\nresource = \"data\"\nshelf = 1\nslot = 1\ninterfaces = [\"eth0\"]\nbufcnt = 65536\n", []string{`t.toml:12: exports.aoe[0].bufcnt: 65536 is out of range`}},
	{"aoe inline array", base + "[exports]\naoe = [\n  { resource = \"data\", shelf = 1, slot = 1, interfaces = [\"eth0\"] },\n  { resource = \"data\", shelf = 1, slot = 255, interfaces = [\"eth0\"] },\n]\n",
		[]string{`t.toml:10: exports.aoe[1].slot: slot 255 (0xff) is reserved for broadcast`}},

	// NBD exports.
	{"nbd unknown resource", base + "[[exports.nbd]]\nresource = \"date\"\n", []string{`t.toml:8: exports.nbd[0].resource: unknown resource "date" (did you mean "data"?)`}},
	{"nbd bad listen", base + "[[exports.nbd]]\nresource = \"data\"\nlisten = \"10809\"\n", []string{`t.toml:9: exports.nbd[0].listen: "10809" is not host:port`}},
	{"nbd bad listen port", base + "[[exports.nbd]]\nresource = \"data\"\nlisten = \"127.0.0.1:0\"\n", []string{`t.toml:9: exports.nbd[0].listen: port "0"`}},
	{"nbd duplicate name", base + "[[exports.nbd]]\nresource = \"data\"\n[[exports.nbd]]\nresource = \"data\"\nlisten = \"0.0.0.0:10809\"\n",
		[]string{`t.toml:9: exports.nbd[1].name: export name "data" on 0.0.0.0:10809 is also used by exports.nbd[0] (line 7); give each export on one address its own name`}},
	{"nbd duplicate explicit name", base + "[resources.logs]\ndisk = { alpha = \"/dev/l\" }\n[[exports.nbd]]\nresource = \"data\"\nname = \"x\"\n[[exports.nbd]]\nresource = \"logs\"\nname = \"x\"\n",
		[]string{`t.toml:14: exports.nbd[1].name: export name "x" on 0.0.0.0:10809 is also used by exports.nbd[0] (line 11)`}},
	{"nbd listen wildcard conflict", base + "[[exports.nbd]]\nresource = \"data\"\nlisten = \"127.0.0.1:10809\"\n[[exports.nbd]]\nresource = \"data\"\nname = \"other\"\nlisten = \"0.0.0.0:10809\"\n",
		[]string{`t.toml:13: exports.nbd[1].listen: 0.0.0.0:10809 conflicts with 127.0.0.1:10809 of exports.nbd[0] (line 9): a wildcard address takes the port on every interface`}},
	{"nbd listen empty host conflict", base + "[[exports.nbd]]\nresource = \"data\"\n[[exports.nbd]]\nresource = \"data\"\nname = \"other\"\nlisten = \":10809\"\n",
		[]string{`t.toml:12: exports.nbd[1].listen: :10809 conflicts with 0.0.0.0:10809 of exports.nbd[0] (line 7)`}},
	{"nbd listen on replication", base + "[[exports.nbd]]\nresource = \"data\"\nlisten = \"10.0.0.2:7777\"\n", []string{`t.toml:9: exports.nbd[0].listen: 10.0.0.2:7777 collides with the replication address 10.0.0.2:7777 of node beta (line 4); use another port`}},
	{"nbd wildcard on replication port", base + "[[exports.nbd]]\nresource = \"data\"\nlisten = \"[::]:7777\"\n", []string{`t.toml:9: exports.nbd[0].listen: [::]:7777 collides with the replication address 10.0.0.1:7777 of node alpha (line 2)`}},
	{"nbd empty name", base + "[[exports.nbd]]\nresource = \"data\"\nname = \"\"\n", []string{`t.toml:9: exports.nbd[0].name: must be 1 to 4096 bytes long (it is 0)`}},
	{"nbd long name", base + "[[exports.nbd]]\nresource = \"data\"\nname = \"" + strings.Repeat("n", 4097) + "\"\n", []string{`t.toml:9: exports.nbd[0].name: must be 1 to 4096 bytes long (it is 4097)`}},
	{"nbd long description", base + "[[exports.nbd]]\nresource = \"data\"\ndescription = \"" + strings.Repeat("d", 4097) + "\"\n", []string{`t.toml:9: exports.nbd[0].description: is 4097 bytes; shorten it to at most 4096`}},
	{"nbd missing resource", base + "[[exports.nbd]]\nlisten = \"127.0.0.1:10809\"\n", []string{`t.toml:7: exports.nbd[0].resource: missing`}},

	// Service address.
	{"service no prefix", base + "service_address = \"10.0.0.10\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "10.0.0.10" has no prefix length; add the length of the clients' network as ` + "`ip addr add`" + ` takes it, for example 10.0.0.10/24`}},
	{"service no prefix v6", base + "service_address = \"fd00::10\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "fd00::10" has no prefix length;`, `for example fd00::10/64`}},
	{"service not an address", base + "service_address = \"db.example.com/24\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "db.example.com/24" is not an IP address with a prefix length; for example: service_address = "10.0.0.10/24"`}},
	{"service type", base + "service_address = 10\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: must be a string, not an integer; for example: service_address = "10.0.0.10/24"`}},
	{"service network address", base + "service_address = \"10.0.0.0/24\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "10.0.0.0/24" cannot be a service address: it is the network address of 10.0.0.0/24; give a host address`}},
	{"service broadcast address", base + "service_address = \"10.0.1.255/23\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "10.0.1.255/23" cannot be a service address: it is the broadcast address of 10.0.0.0/23`}},
	{"service loopback", base + "service_address = \"127.0.0.10/8\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "127.0.0.10/8" cannot be a service address: it is a loopback address`}},
	{"service link-local v6", base + "service_address = \"fe80::10/64\"\nservice_interface = \"eth1\"\n", []string{`it is link-local`}},
	{"service mapped", base + "service_address = \"::ffff:10.0.0.10/120\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: "::ffff:10.0.0.10/120" is an IPv4-mapped IPv6 address; write it as IPv4, for example 10.0.0.10/24`}},
	{"service zero prefix", base + "service_address = \"10.0.0.10/0\"\nservice_interface = \"eth1\"\n", []string{`its prefix length is 0`}},
	{"service without interface", base + "service_address = \"10.0.0.10/24\"\n", []string{`t.toml:5: resources.data.service_interface: missing: service_address needs the interface that gets it on each node that may become primary, for example: service_interface = "eth1"`}},
	{"service interface without address", base + "service_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_interface: is set but service_address is not`}},
	{"service interface bad name", base + "service_address = \"10.0.0.10/24\"\nservice_interface = \"eth 1\"\n", []string{`t.toml:8: resources.data.service_interface: "eth 1" is not a valid interface name`}},
	{"service interface type", base + "service_address = \"10.0.0.10/24\"\nservice_interface = [\"eth1\"]\n", []string{`t.toml:8: resources.data.service_interface: must be a string or a table of node = interface, not an array`}},
	{"service interface node missing", base + "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\" }\n", []string{`t.toml:8: resources.data.service_interface: names no interface for beta, which holds a disk of resource "data" and may become its primary; add beta = "IFACE"`}},
	{"service interface unknown node", base + "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"eth1\", gama = \"eth1\" }\n", []string{`t.toml:8: resources.data.service_interface.gama: unknown node "gama"`}},
	{"service interface diskless node", base + "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"eth1\", gamma = \"eth1\" }\n[nodes.gamma]\nreplication = \"10.0.0.3:7777\"\n",
		[]string{`t.toml:8: resources.data.service_interface.gamma: node "gamma" holds no disk of resource "data", so it never holds its service address; name only alpha, beta`}},
	{"service interface value type", base + "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = 2 }\n", []string{`t.toml:8: resources.data.service_interface.beta: must be a string (the interface on node beta), not an integer`}},
	{"service interface bad name in table", base + "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"a/b\" }\n", []string{`t.toml:8: resources.data.service_interface.beta: "a/b" is not a valid interface name`}},
	{"service address twice", base + "service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n[resources.other]\ndisk = { alpha = \"/dev/o\" }\nservice_address = \"10.0.0.10/16\"\nservice_interface = \"eth1\"\n",
		[]string{`t.toml:11: resources.other.service_address: 10.0.0.10 is also the service address of resource data (line 7); give each resource its own address`}},
	{"service address is a node's", base + "service_address = \"10.0.0.2/24\"\nservice_interface = \"eth1\"\n", []string{`t.toml:7: resources.data.service_address: 10.0.0.2 is the replication address of node beta (line 4); the service address moves between nodes`}},
	{"nbd listen on another resource's service address", base + "service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n[resources.other]\ndisk = { alpha = \"/dev/o\" }\n[[exports.nbd]]\nresource = \"other\"\nlisten = \"10.0.0.10:10809\"\n",
		[]string{`t.toml:13: exports.nbd[0].listen: 10.0.0.10 is the service address of resource data, whose primary may be another node than other's; listen on 0.0.0.0:10809`}},
	{"nbd listen on another resource's service address, own one", base + "service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n[resources.other]\ndisk = { alpha = \"/dev/o\" }\nservice_address = \"fd00::11/64\"\nservice_interface = \"eth1\"\n[[exports.nbd]]\nresource = \"other\"\nlisten = \"10.0.0.10:10809\"\n",
		[]string{`t.toml:15: exports.nbd[0].listen: 10.0.0.10 is the service address of resource data, whose primary may be another node than other's; listen on [fd00::11]:10809 (the service address of other) or 0.0.0.0:10809`}},

	// Limits.
	{"limits unknown key", base + "[limits]\nnbd_max_conections = 3\n", []string{`t.toml:8: limits.nbd_max_conections: unknown key in [limits]; did you mean "nbd_max_connections"?`}},
	{"limits key in export", base + "[[exports.nbd]]\nresource = \"data\"\nnbd_idle_timeout = \"1m\"\n", []string{`t.toml:9: exports.nbd[0].nbd_idle_timeout: unknown key in [[exports.nbd]]; "nbd_idle_timeout" belongs in the [limits] table`}},
	{"limits type", base + "limits = 3\n", []string{`t.toml:7: resources.data.limits: unknown key in [resources.NAME]; "limits" belongs in the top level`}},
	{"limits not a table", "limits = 3\n" + base, []string{`t.toml:1: limits: must be a table, not an integer; for example: [limits]`}},
	{"limits memory small", base + "[limits]\nnbd_memory = \"16MiB\"\n", []string{`t.toml:8: limits.nbd_memory: 16 MiB is less than the largest NBD request (32 MiB); use at least 32 MiB (default 256 MiB)`}},
	{"limits memory type", base + "[limits]\nnbd_memory = true\n", []string{`t.toml:8: limits.nbd_memory: must be a size string or a number of bytes, not a boolean`}},
	{"limits connections zero", base + "[limits]\nnbd_max_connections = 0\n", []string{`t.toml:8: limits.nbd_max_connections: 0 is out of range; use 1 to 65535 (default 128)`}},
	{"limits connections big", base + "[limits]\ncontrol_max_connections = 70000\n", []string{`t.toml:8: limits.control_max_connections: 70000 is out of range; use 1 to 65535 (default 32)`}},
	{"limits connections type", base + "[limits]\nreplication_max_connections = \"many\"\n", []string{`t.toml:8: limits.replication_max_connections: must be an integer, not a string; for example: replication_max_connections = 128`}},
	{"limits duration unit", base + "[limits]\nnbd_request_timeout = \"30\"\n", []string{`t.toml:8: limits.nbd_request_timeout: "30" is not a duration; write a number with a unit (ms, s, m, h), for example: nbd_request_timeout = "30s"`}},
	{"limits duration negative", base + "[limits]\nnbd_idle_timeout = \"-1m\"\n", []string{`t.toml:8: limits.nbd_idle_timeout: "-1m" is negative`}},
	{"limits duration negative seconds", base + "[limits]\nnbd_idle_timeout = -5\n", []string{`t.toml:8: limits.nbd_idle_timeout: -5 seconds is out of range`}},
	{"limits duration long", base + "[limits]\ncontrol_idle_timeout = \"9000h\"\n", []string{`t.toml:8: limits.control_idle_timeout: "9000h" is too long; use at most 8760h0m0s`}},
	{"limits duration zero", base + "[limits]\nreplication_auth_timeout = \"0s\"\n", []string{`t.toml:8: limits.replication_auth_timeout: must be more than 0 (default 10s)`}},
	{"limits duration zero int", base + "[limits]\ncontrol_idle_timeout = 0\n", []string{`t.toml:8: limits.control_idle_timeout: must be more than 0 (default 30s)`}},
	{"limits duration type", base + "[limits]\nnbd_handshake_timeout = 1.5\n", []string{`t.toml:8: limits.nbd_handshake_timeout: must be a duration string or a number of seconds, not a float`}},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(tc.doc), "/etc/tharsis")
			if err == nil {
				t.Fatalf("Parse succeeded, want errors %q; config:\n%s", tc.want, c.Marshal())
			}
			if c != nil {
				t.Errorf("Parse returned a Config with an error")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is %T, want non-empty Errors", err)
			}
			text := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("errors do not contain %q; got:\n%s", w, text)
				}
			}
			for i, e := range errs {
				if e.File != "t.toml" {
					t.Errorf("error %d names file %q", i, e.File)
				}
				if i > 0 && errs[i-1].Line > e.Line {
					t.Errorf("errors not sorted by line:\n%s", text)
				}
			}
		})
	}
}

// TestAllErrorsCollected checks that one pass reports every problem, sorted
// by line, each naming file, line and key.
func TestAllErrorsCollected(t *testing.T) {
	doc := `secret_fle = "x"
[nodes.alpha]
replication = "10.0.0.1"
[resources.data]
disk = { alpha = "/dev/a", gamma = "/dev/g" }
size = "10 XB"
[[exports.aoe]]
resource = "dta"
shelf = 65535
slot = 255
interfaces = ["eth0"]
[[exports.nbd]]
resource = "nope"
`
	_, err := Parse("c.toml", []byte(doc), "/")
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v, want Errors", err)
	}
	want := []string{
		`c.toml:1: secret_fle: unknown key`,
		`c.toml:3: nodes.alpha.replication: "10.0.0.1" is not host:port`,
		`c.toml:5: resources.data.disk.gamma: unknown node "gamma"`,
		`c.toml:6: resources.data.size: size "10 XB" has an unknown unit`,
		`c.toml:8: exports.aoe[0].resource: unknown resource "dta"`,
		`c.toml:9: exports.aoe[0].shelf: shelf 65535 (0xffff) is reserved for broadcast`,
		`c.toml:10: exports.aoe[0].slot: slot 255 (0xff) is reserved for broadcast`,
		`c.toml:13: exports.nbd[0].resource: unknown resource "nope"`,
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(errs[i].Error(), w) {
			t.Errorf("error %d = %q, want prefix %q", i, errs[i].Error(), w)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f", Line: 3, Key: "k", Msg: "m"}, "f:3: k: m"},
		{Error{File: "f", Line: 0, Key: "k", Msg: "m"}, "f: k: m"},
		{Error{File: "f", Line: 2, Msg: "m"}, "f:2: m"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
	errs := Errors{{File: "a", Line: 1, Key: "x", Msg: "one"}, {File: "a", Line: 2, Key: "y", Msg: "two"}}
	if got, want := errs.Error(), "a:1: x: one\na:2: y: two"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestSuggest(t *testing.T) {
	valid := resourceKeys
	for _, tc := range []struct{ in, want string }{
		{"sise", "size"},
		{"Size", "size"},
		{"logdir", "log_dir"},
		{"segmentsize", "segment_size"},
		{"primay", "primary"},
		{"colour", ""},
		{"x", ""},
		{strings.Repeat("z", 200), ""},
	} {
		if got := suggest(tc.in, valid); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
