package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestServiceAddress(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lines  string
		addr   string
		ifaces map[string]string
		marsh  string // a line Marshal writes
	}{
		{"none", "", "", nil, ""},
		{"one interface", "service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n", "10.0.0.10/24",
			map[string]string{"alpha": "eth1", "beta": "eth1"}, `service_interface = "eth1"`},
		{"per node", "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"bond0\" }\n", "10.0.0.10/24",
			map[string]string{"alpha": "eth1", "beta": "bond0"}, `service_interface = { alpha = "eth1", beta = "bond0" }`},
		{"table, same names", "service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"eth1\" }\n", "10.0.0.10/24",
			map[string]string{"alpha": "eth1", "beta": "eth1"}, `service_interface = "eth1"`},
		{"ipv6", "service_address = \"FD00::10/64\"\nservice_interface = \"eth1\"\n", "fd00::10/64",
			map[string]string{"alpha": "eth1", "beta": "eth1"}, `service_address = "fd00::10/64"`},
		{"host route", "service_address = \"192.0.2.7/32\"\nservice_interface = \"eth1\"\n", "192.0.2.7/32",
			map[string]string{"alpha": "eth1", "beta": "eth1"}, ""},
		{"point to point", "service_address = \"192.0.2.6/31\"\nservice_interface = \"eth1\"\n", "192.0.2.6/31",
			map[string]string{"alpha": "eth1", "beta": "eth1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(base+tc.lines), "/etc")
			if err != nil {
				t.Fatal(err)
			}
			r := c.Resources["data"]
			if tc.addr == "" {
				if r.ServiceAddress.IsValid() || r.ServiceInterface != nil {
					t.Fatalf("service address %v on %v, want none", r.ServiceAddress, r.ServiceInterface)
				}
			} else if r.ServiceAddress != netip.MustParsePrefix(tc.addr) || !reflect.DeepEqual(r.ServiceInterface, tc.ifaces) {
				t.Fatalf("service address %v on %v, want %s on %v", r.ServiceAddress, r.ServiceInterface, tc.addr, tc.ifaces)
			}
			out := c.Marshal()
			if tc.marsh != "" && !strings.Contains(string(out), tc.marsh+"\n") {
				t.Errorf("Marshal does not write %q:\n%s", tc.marsh, out)
			}
			c2, err := Parse("t.toml", out, "/etc")
			if err != nil {
				t.Fatalf("marshalled and parsed again: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(c.Resources, c2.Resources) {
				t.Errorf("round trip differs:\n%s\n---\n%s", out, c2.Marshal())
			}
			if tc.addr != "" && !strings.Contains(c.Summary(), "service address "+tc.addr) {
				t.Errorf("Summary does not name the service address:\n%s", c.Summary())
			}
		})
	}
}

func TestServiceDiff(t *testing.T) {
	a := mustParse(t, base+"service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n")
	b := mustParse(t, base+"service_address = \"10.0.0.11/24\"\nservice_interface = { alpha = \"eth1\", beta = \"bond0\" }\n")
	got := Diff(a, b)
	if len(got) != 1 || got[0].String() != "resource data modified: service_address, service_interface" {
		t.Errorf("Diff = %v", got)
	}
	if d := Diff(a, mustParse(t, base+"service_address = \"10.0.0.10/24\"\nservice_interface = { alpha = \"eth1\", beta = \"eth1\" }\n")); len(d) != 0 {
		t.Errorf("the same interfaces written as a table: Diff = %v", d)
	}
}

// An export may listen on its own resource's service address.
func TestServiceListen(t *testing.T) {
	c := mustParse(t, base+"service_address = \"10.0.0.10/24\"\nservice_interface = \"eth1\"\n[[exports.nbd]]\nresource = \"data\"\nlisten = \"10.0.0.10:10809\"\n")
	if c.NBD[0].Listen != "10.0.0.10:10809" {
		t.Errorf("listen %q", c.NBD[0].Listen)
	}
}
