// Command vmbench measures sequential O_DIRECT dd throughput inside the
// QEMU test guest, through the Linux aoe and nbd drivers, against tharsis
// and, in the same run and guest, against vblade and nbd-server. It prints
// a Markdown section for bench/RESULTS.md (bench/vm.sh appends it).
//
//	go run ./vm-tests/vmbench -mtu 1500,9000 -size 256
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	vmtests "github.com/tharsis/tharsis/vm-tests"
)

const mib = 1 << 20

// device is one block device the guest measures.
type device struct {
	label   string // e.g. "tharsis AoE"
	target  string // "tharsis" or "reference"
	proto   string // "aoe" or "nbd"
	guest   string // guest device path
	connect string // guest shell line to attach it
}

func main() {
	mtus := flag.String("mtu", "1500,9000", "comma-separated tap/guest MTUs, one guest boot each")
	size := flag.Int("size", 256, "MiB per dd run")
	timeout := flag.Duration("timeout", 15*time.Minute, "bound on the whole run")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *mtus, *size); err != nil {
		fmt.Fprintln(os.Stderr, "vmbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mtuList string, size int) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates a tap device")
	}
	g, err := vmtests.BuildGuest(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "tharsis-vmbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin, tharsisErr := vmtests.BuildTharsis(ctx, work)
	fmt.Fprintf(os.Stderr, "vmbench: kernel %s, accel %s, %d MiB per run\n", g.KernelVersion, vmtests.Accel(), size)

	var out strings.Builder
	fmt.Fprintf(&out, "Sequential `dd bs=1M count=%d` with O_DIRECT inside a QEMU guest (%s, 1 vCPU, Debian %s kernel, "+
		"Linux `aoe` and `nbd` drivers) on a host tap device; source `/dev/zero` for writes. One guest boot per MTU; "+
		"every target served from a sparse file on the same host filesystem. tharsis runs its defaults (replicated, "+
		"AoE writes acknowledged once durable), so the aoe row compares durable writes with vblade's page-cache "+
		"writes; the write_cache row is like for like.\n\n", size, vmtests.Accel(), g.KernelVersion)
	if tharsisErr != nil {
		fmt.Fprintf(&out, "tharsis: not measured (%v)\n\n", tharsisErr)
	}
	fmt.Fprintln(&out, "| MTU | protocol | op | tharsis MB/s | reference | reference MB/s | tharsis / reference |")
	fmt.Fprintln(&out, "| ---: | --- | --- | ---: | --- | ---: | ---: |")
	var notes []string
	for _, m := range strings.Split(mtuList, ",") {
		mtu, err := strconv.Atoi(strings.TrimSpace(m))
		if err != nil {
			return fmt.Errorf("bad -mtu %q", m)
		}
		var note string
		res, err := runMTU(ctx, g, bin, tharsisErr == nil, work, mtu, size, &note)
		if note != "" {
			notes = append(notes, note)
		}
		if err != nil {
			return fmt.Errorf("MTU %d: %w", mtu, err)
		}
		for _, row := range []struct{ target, proto, label, ref string }{
			{"tharsis", "aoe", "aoe", "vblade"},
			{"tharsis-wc", "aoe", "aoe (tharsis write_cache)", "vblade"},
			{"tharsis", "nbd", "nbd", "nbd-server"},
		} {
			for _, op := range []string{"read", "write"} {
				th, ok1 := res[key{row.target, row.proto, op}]
				ref, ok2 := res[key{"reference", row.proto, op}]
				ratio := "n/a"
				ths := "n/a"
				if ok1 {
					ths = fmt.Sprintf("%.1f", th)
				}
				if ok1 && ok2 && ref > 0 {
					ratio = fmt.Sprintf("%.2f×", th/ref)
				}
				refs := "n/a"
				if ok2 {
					refs = fmt.Sprintf("%.1f", ref)
				}
				fmt.Fprintf(&out, "| %d | %s | %s | %s | %s | %s | %s |\n", mtu, row.label, op, ths, row.ref, refs, ratio)
			}
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&out, "\n%s\n", n)
	}
	fmt.Print(out.String())
	return nil
}

type key struct{ target, proto, op string }

var ddLine = regexp.MustCompile(`bench label=(\S+) target=(\S+) proto=(\S+) op=(\S+) bytes=(\d+) t0=([0-9.]+) t1=([0-9.]+)`)

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func runMTU(ctx context.Context, g *vmtests.Guest, bin string, withTharsis bool, work string, mtu, size int, note *string) (map[key]float64, error) {
	tap, err := vmtests.CreateTap(ctx, mtu)
	if err != nil {
		return nil, err
	}
	defer tap.Close()
	resSize := int64(size+64) * mib
	var devs []device
	var targets []vmtests.Target
	defer func() {
		for _, t := range targets {
			t.Stop()
		}
	}()
	start := func(kind string, s *vmtests.Setup) error {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return err
		}
		if err := s.CreateResources(); err != nil {
			return err
		}
		t := vmtests.NewTarget(kind, bin, s)
		if err := t.Start(ctx); err != nil {
			return fmt.Errorf("%w\n%s", err, t.Output())
		}
		targets = append(targets, t)
		return nil
	}
	if withTharsis {
		s := &vmtests.Setup{Dir: fmt.Sprintf("%s/mtu%d-tharsis", work, mtu), Tap: tap,
			Resources: []vmtests.Resource{{Name: "t0", Size: resSize}, {Name: "t1", Size: resSize}},
			AoE: []vmtests.AoEExport{{Resource: "t0", Shelf: 1, Slot: 1},
				{Resource: "t1", Shelf: 1, Slot: 2, WriteCache: true}},
			NBD: []vmtests.NBDExport{{Resource: "t0", Name: "t0", Port: 10809}}}
		if err := start(vmtests.KindTharsis, s); err != nil {
			// Still measure the reference peers; the table says why tharsis is missing.
			*note = fmt.Sprintf("MTU %d: tharsis not measured: %s", mtu, firstLine(err.Error()))
			fmt.Fprintln(os.Stderr, "vmbench:", err)
		} else {
			devs = append(devs,
				device{"tharsis-aoe", "tharsis", "aoe", "/dev/etherd/e1.1", "aoe_wait e1.1"},
				device{"tharsis-aoe-wc", "tharsis-wc", "aoe", "/dev/etherd/e1.2", "aoe_wait e1.2"},
				device{"tharsis-nbd", "tharsis", "nbd", "/dev/nbd0", fmt.Sprintf("nbd-client -N t0 %s 10809 /dev/nbd0", tap.HostIP)})
		}
	}
	ref := &vmtests.Setup{Dir: fmt.Sprintf("%s/mtu%d-reference", work, mtu), Tap: tap,
		Resources: []vmtests.Resource{{Name: "v0", Size: resSize}, {Name: "n0", Size: resSize}},
		AoE:       []vmtests.AoEExport{{Resource: "v0", Shelf: 2, Slot: 1}},
		NBD:       []vmtests.NBDExport{{Resource: "n0", Name: "n0", Port: 10810}}}
	if err := start(vmtests.KindReference, ref); err != nil {
		return nil, err
	}
	devs = append(devs,
		device{"vblade", "reference", "aoe", "/dev/etherd/e2.1", "aoe_wait e2.1"},
		device{"nbd-server", "reference", "nbd", "/dev/nbd1", fmt.Sprintf("nbd-client -N n0 %s 10810 /dev/nbd1", tap.HostIP)})

	var script strings.Builder
	for _, d := range devs {
		fmt.Fprintf(&script, "run %s || exit 1\n", d.connect)
	}
	script.WriteString("aoe_stat\n")
	// Writes first (reads of holes would flatter every target), interleaved
	// across targets so drift on a shared machine hits them alike.
	for _, op := range []string{"write", "read"} {
		for _, d := range devs {
			dd := fmt.Sprintf("dd if=/dev/zero of=%s bs=1M count=%d oflag=direct conv=fsync", d.guest, size)
			if op == "read" {
				dd = fmt.Sprintf("dd if=%s of=/dev/null bs=1M count=%d iflag=direct", d.guest, size)
			}
			// Debian's busybox dd prints no timing line: time it with /proc/uptime.
			fmt.Fprintf(&script, "t0=$(cut -d' ' -f1 /proc/uptime)\n%s 2>/tmp/dd.out || { cat /tmp/dd.out; exit 1; }\nt1=$(cut -d' ' -f1 /proc/uptime)\n", dd)
			fmt.Fprintf(&script, "mark bench label=%s target=%s proto=%s op=%s bytes=%d t0=$t0 t1=$t1\n", d.label, d.target, d.proto, op, size*mib)
		}
	}
	r, err := vmtests.Boot(ctx, vmtests.BootConfig{Guest: g, Tap: tap, Script: script.String(), WorkDir: work, Memory: 512})
	if err == nil {
		if v, _ := r.Value("done"); v != "rc=0" {
			err = fmt.Errorf("guest scenario ended with %s", v)
		}
	}
	if err != nil {
		var logs strings.Builder
		for _, t := range targets {
			logs.WriteString(t.Output())
		}
		return nil, fmt.Errorf("%w\n--- guest console ---\n%s\n--- targets ---\n%s", err, r.Console, logs.String())
	}
	fmt.Fprintf(os.Stderr, "vmbench: MTU %d boot took %s\n", mtu, r.Elapsed.Round(time.Second))
	out := map[key]float64{}
	for _, l := range r.Lines("bench", "aoe-stat") {
		fmt.Fprintln(os.Stderr, l)
		m := ddLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		bytes, _ := strconv.ParseFloat(m[5], 64)
		t0, _ := strconv.ParseFloat(m[6], 64)
		t1, _ := strconv.ParseFloat(m[7], 64)
		secs := t1 - t0
		if secs > 0 {
			out[key{m[2], m[3], m[4]}] = bytes / secs / 1e6
		}
	}
	return out, nil
}
