// Package polltest waits, in tests, for what the proxy's packages see happen
// asynchronously: bytes and FINs crossing loopback, connections closing.
package polltest

import (
	"testing"
	"time"
)

// Timeout is how long Until waits.
const Timeout = 5 * time.Second

// Until polls cond every millisecond until it holds, and fails the test if it does not
// within Timeout.
func Until(tb testing.TB, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(Timeout); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("the condition did not hold within %s", Timeout)
		}
		time.Sleep(time.Millisecond)
	}
}
