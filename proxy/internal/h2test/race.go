//go:build race

package h2test

// RaceEnabled reports whether the race detector is on: it allocates, so allocation
// counts are only checked without it.
const RaceEnabled = true
