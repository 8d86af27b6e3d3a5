//go:build !linux

package simulation

import "time"

// adviseHugePages does nothing here: the advice is Linux's madvise.
func adviseHugePages(int64, time.Duration) (stop func()) { return func() {} }
