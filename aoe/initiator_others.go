//go:build !linux

package aoe

import (
	"context"
	"time"
)

// Initiator sends AoE requests on one interface; only on Linux.
type Initiator struct{}

// NewInitiator fails on this platform.
func NewInitiator(iface string) (*Initiator, error) { return nil, errUnsupported }

// Close does nothing on this platform.
func (in *Initiator) Close() error { return nil }

// Stat fails on this platform.
func Stat(ctx context.Context, ifaces []string, timeout time.Duration) ([]TargetInfo, error) {
	return nil, errUnsupported
}
