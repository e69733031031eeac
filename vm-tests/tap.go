package vmtests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"os/exec"
	"strings"
)

// Tap is a tap device created for one run, with the host end on a private
// /24 (HostIP) and the guest expected at GuestIP.
type Tap struct {
	Name    string
	HostIP  string
	GuestIP string
	MTU     int
	Index   int // interface index, as /proc/net/packet shows it
}

// CreateTap creates and brings up a tap device with a fresh 10.x.y.0/24
// subnet not already in use on this machine. Close removes it.
func CreateTap(ctx context.Context, mtu int) (*Tap, error) {
	if mtu == 0 {
		mtu = 1500
	}
	var b [3]byte
	rand.Read(b[:])
	name := "thv" + hex.EncodeToString(b[:])
	prefix, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	t := &Tap{Name: name, HostIP: prefix + ".1", GuestIP: prefix + ".2", MTU: mtu}
	if err := ipCmd(ctx, "tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return nil, fmt.Errorf("create tap device (needs root / CAP_NET_ADMIN): %w", err)
	}
	for _, args := range [][]string{
		{"link", "set", name, "mtu", fmt.Sprint(mtu)},
		{"addr", "add", t.HostIP + "/24", "dev", name},
		{"link", "set", name, "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			t.Close()
			return nil, err
		}
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Close()
		return nil, err
	}
	t.Index = ifi.Index
	return t, nil
}

// Close deletes the tap device (and with it its address and routes).
func (t *Tap) Close() error {
	return ipCmd(context.Background(), "link", "del", t.Name)
}

func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func freeSubnet() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for range 50 {
		n, _ := rand.Int(rand.Reader, big.NewInt(50*256))
		prefix := fmt.Sprintf("10.%d.%d", 200+n.Int64()/256, n.Int64()%256)
		_, sub, _ := net.ParseCIDR(prefix + ".0/24")
		used := false
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && (sub.Contains(ipn.IP) || ipn.Contains(sub.IP)) {
				used = true
			}
		}
		if !used {
			return prefix, nil
		}
	}
	return "", fmt.Errorf("no free 10.200-249.x.0/24 subnet for the test tap device")
}
