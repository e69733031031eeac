package appliance

import (
	"context"
	"fmt"
	"strings"
)

func (d *Daemon) startAoE(ctx context.Context) error {
	for _, e := range d.cfg.AoE {
		if d.exportDevice(e.Resource) != nil {
			d.log.Warn("AoE export not wired yet", "target", aoeName(e.Shelf, e.Slot))
		}
	}
	return nil
}

func (d *Daemon) stopAoE() {}

func aoeName(shelf uint16, slot uint8) string { return fmt.Sprintf("e%d.%d", shelf, slot) }

func joinComma(s []string) string { return strings.Join(s, ",") }
