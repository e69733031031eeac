package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/config"
)

// localCheck checks what cfg asks of node on this host, without changing
// anything: every disk of the node exists and holds the resource, every
// log and state directory is (or can be made) writable, every AoE
// interface exists. It prints one line per check and returns how many
// failed.
func localCheck(w io.Writer, cfg *config.Config, node string) int {
	failed := 0
	report := func(what string, err error) {
		if err != nil {
			failed++
			fmt.Fprintf(w, "  FAIL  %s: %v\n", what, err)
			return
		}
		fmt.Fprintf(w, "  ok    %s\n", what)
	}
	n := cfg.Nodes[node]
	report("state dir "+n.StateDir, writableDir(n.StateDir))
	for _, res := range cfg.ResourceNames() {
		rc := cfg.Resources[res]
		path, ok := rc.Disks[node]
		if !ok {
			continue
		}
		report(fmt.Sprintf("resource %s: disk %s", res, path), checkDisk(path, rc.Size))
		if rc.Replicated {
			report(fmt.Sprintf("resource %s: log dir %s", res, cfg.LogDir(res, node)), writableDir(cfg.LogDir(res, node)))
		}
	}
	for _, e := range cfg.AoE {
		if _, ok := cfg.Resources[e.Resource].Disks[node]; !ok {
			continue
		}
		for _, iface := range e.Interfaces {
			_, err := net.InterfaceByName(iface)
			report(fmt.Sprintf("aoe e%d.%d: interface %s", e.Shelf, e.Slot, iface), err)
		}
	}
	return failed
}

// checkDisk opens path read-only and checks it holds size bytes (0: any).
func checkDisk(path string, size int64) error {
	d, err := blockdev.OpenFile(path, true)
	if err != nil {
		return err
	}
	defer d.Close()
	if size > 0 && d.Capacity() < size {
		return fmt.Errorf("it holds %s, fewer than the resource's %s", config.FormatSize(d.Capacity()), config.FormatSize(size))
	}
	return nil
}

// writableDir says whether dir is writable, or, when it does not exist
// yet, whether its nearest existing parent is (the daemon creates it).
func writableDir(dir string) error {
	for p := dir; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) && filepath.Dir(p) != p {
			continue
		}
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", p)
		}
		if err := unix.Access(p, unix.W_OK); err != nil {
			return fmt.Errorf("%s is not writable: %w", p, err)
		}
		return nil
	}
}
