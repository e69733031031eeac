//go:build !linux

package aoe

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

var errUnsupported = errors.New("AoE targets need Linux raw sockets; this platform is not supported")

// Server serves every target of one network interface; only on Linux.
type Server struct {
	*core
	AnnounceAt []time.Duration
}

// NewServer fails on this platform.
func NewServer(iface string, targets []TargetConfig, logger *slog.Logger) (*Server, error) {
	return nil, errUnsupported
}

// Serve fails on this platform.
func (s *Server) Serve(ctx context.Context) error { return errUnsupported }

// AddTarget fails on this platform.
func (s *Server) AddTarget(tc TargetConfig) error { return errUnsupported }

// RemoveTarget fails on this platform.
func (s *Server) RemoveTarget(ctx context.Context, shelf uint16, slot uint8) (State, error) {
	return State{}, errUnsupported
}

// committer exists on Linux only.
type committer struct{}

// Announce fails on this platform.
func (s *Server) Announce() error { return errUnsupported }

// Close does nothing on this platform.
func (s *Server) Close() error { return nil }
