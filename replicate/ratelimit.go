package replicate

import (
	"context"

	"golang.org/x/time/rate"
)

// NewByteLimiter returns a limiter of bytesPerSec for SecondaryOptions'
// SyncLimiter and FetchLimiter, or nil (no limit) when bytesPerSec <= 0.
// Its burst is a tenth of a second's worth (at least 64 KiB): traffic stays
// within the limit over any second.
func NewByteLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(max(bytesPerSec/10, 64<<10)))
}

// waitBytes takes n bytes' worth of tokens from lim (nil: no limit), in
// pieces no larger than its burst.
func waitBytes(ctx context.Context, lim *rate.Limiter, n int) error {
	if lim == nil {
		return nil
	}
	for n > 0 {
		k := min(n, lim.Burst())
		if err := lim.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
