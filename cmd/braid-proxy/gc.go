package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"strings"
)

// gcOptions are the garbage collector's flags. Empty, the runtime's own settings stay:
// GOGC and GOMEMLIMIT from the environment, else growth of 100% and no memory limit.
//
// Those defaults suit a sidecar (docs/benchmarks.md has the measurements): its live heap
// is small (about 2.5 MB with 1000 Services configured) and nearly all its garbage is per
// request. A growth of 200% halves the collections (GC is 7–11% of a proxy's CPU at full
// load) but adds the live heap again to the resident set, which the memory budget (20 MB
// with 1000 Services) cannot spare. A soft memory limit near that budget makes the
// collector run nearly back to back (10 MiB tripled the client proxy's CPU per request at
// 1000 rps): a limit belongs with the pod's memory limit, well above the live heap.
type gcOptions struct {
	percent, limit string
}

func gcFlags(fs *flag.FlagSet) *gcOptions {
	o := &gcOptions{}
	fs.StringVar(&o.percent, "gc-percent", "", "heap growth between garbage collections, in % of the live heap, or off (default: GOGC, else 100)")
	fs.StringVar(&o.limit, "memory-limit", "", "soft limit of the Go runtime's memory, e.g. 64MiB, or off: the collector works harder near it (default: GOMEMLIMIT, else off)")
	return o
}

// apply sets the collector's growth and soft memory limit the flags give.
func (o *gcOptions) apply() error {
	if o.percent != "" {
		percent, err := gcPercent(o.percent)
		if err != nil {
			return fmt.Errorf("--gc-percent: %w", err)
		}
		debug.SetGCPercent(percent)
	}
	if o.limit != "" {
		limit, err := memoryLimit(o.limit)
		if err != nil {
			return fmt.Errorf("--memory-limit: %w", err)
		}
		debug.SetMemoryLimit(limit)
	}
	return nil
}

// gcPercent parses a GOGC value: a percentage, or off (-1: no collection but the memory
// limit's).
func gcPercent(s string) (int, error) {
	if s == "off" {
		return -1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is neither a percentage nor off", s)
	}
	return n, nil
}

// memoryLimit parses a GOMEMLIMIT value: bytes with an optional unit (B, KiB, MiB, GiB,
// TiB), or off.
func memoryLimit(s string) (int64, error) {
	if s == "off" {
		return math.MaxInt64, nil
	}
	num := strings.TrimRight(s, "BKMGTi")
	unit := int64(1)
	switch s[len(num):] {
	case "", "B":
	case "KiB":
		unit = 1 << 10
	case "MiB":
		unit = 1 << 20
	case "GiB":
		unit = 1 << 30
	case "TiB":
		unit = 1 << 40
	default:
		return 0, fmt.Errorf("%q: the units are B, KiB, MiB, GiB and TiB", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	if n > math.MaxInt64/unit {
		return 0, errors.New("the size overflows")
	}
	return n * unit, nil
}
