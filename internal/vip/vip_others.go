//go:build !linux

package vip

import (
	"errors"
	"net/netip"
	"syscall"
)

var errUnsupported = errors.New("service addresses are supported on Linux only")

// Add is not implemented on this platform.
func Add(string, netip.Prefix) (bool, error) { return false, errUnsupported }

// Remove is not implemented on this platform.
func Remove(string, netip.Addr) (bool, error) { return false, errUnsupported }

// Holds is not implemented on this platform.
func Holds(string, netip.Addr) (bool, error) { return false, errUnsupported }

// Announce is not implemented on this platform.
func Announce(string, netip.Addr) error { return errUnsupported }

// Transparent is not implemented on this platform.
func Transparent(string, string, syscall.RawConn) error { return errUnsupported }
