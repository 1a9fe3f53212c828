package netinit

import (
	"os"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// newNetns creates a network namespace for the test and returns a file descriptor of it,
// closed (so the namespace goes away) when the test ends. The test is skipped when it
// cannot be created.
func newNetns(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("writing nftables rules needs root (CAP_NET_ADMIN in a new network namespace)")
	}
	type result struct {
		fd  int
		err error
	}
	done := make(chan result)
	go func() {
		// The thread moves to the new namespace and dies with this goroutine, which never
		// unlocks it: no other goroutine ever runs in that namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		done <- result{fd, err}
	}()
	r := <-done
	if r.err != nil {
		t.Skipf("cannot create a network namespace: %v", r.err)
	}
	t.Cleanup(func() { _ = unix.Close(r.fd) })
	return r.fd
}

// Apply writes the table, and writing it again replaces it rather than adding to it.
func TestApplyIsIdempotent(t *testing.T) {
	ns := newNetns(t)
	o := example()
	want, err := Rules(o)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, r := range want {
		counts[r.Chain]++
	}
	for range 2 {
		if err := Apply(o, nftables.WithNetNSFd(ns)); err != nil {
			t.Fatal(err)
		}
		got, err := Installed(nftables.WithNetNSFd(ns))
		if err != nil {
			t.Fatal(err)
		}
		if got[ChainPrerouting] != counts[ChainPrerouting] || got[ChainOutput] != counts[ChainOutput] {
			t.Fatalf("installed %v rules, want %v", got, counts)
		}
	}
	// Fewer skips replace the table: no rule of the previous run is left.
	o.SkipOutboundPorts, o.SkipOutboundCIDRs = nil, nil
	if err := Apply(o, nftables.WithNetNSFd(ns)); err != nil {
		t.Fatal(err)
	}
	got, err := Installed(nftables.WithNetNSFd(ns))
	if err != nil {
		t.Fatal(err)
	}
	if got[ChainOutput] != counts[ChainOutput]-4 {
		t.Errorf("after dropping 2 ports and 2 networks the output chain has %d rules, want %d", got[ChainOutput], counts[ChainOutput]-4)
	}
}

func TestApplyRejectsBadOptions(t *testing.T) {
	if err := Apply(Options{}); err == nil {
		t.Fatal("Apply took empty options")
	}
}
