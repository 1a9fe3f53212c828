package origdst_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/proxy/netinit"
	"github.com/braidmesh/braid/proxy/origdst"
)

// accept dials addr from inside the calling thread's network namespace and returns the
// connection the listener lis accepted.
func accept(t *testing.T, lis net.Listener, addr string) *net.TCPConn {
	t.Helper()
	client, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = client.Close() })
	c, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// A connection that reached its listener directly has no other destination.
func TestNotRedirected(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	c := accept(t, lis, lis.Addr().String())
	dst, err := origdst.Get(c)
	switch {
	case errors.Is(err, origdst.ErrNotRedirected):
	case err != nil:
		t.Fatalf("Get: %v, want ErrNotRedirected or the listener's address", err)
	case dst.String() != lis.Addr().String():
		t.Fatalf("Get = %s, want the listener's own address %s", dst, lis.Addr())
	}
}

// In a network namespace whose output is redirected by braid-init's rules, the
// proxy reads where IPv4 and IPv6 connections were going.
func TestRedirected(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("redirecting connections needs root (a network namespace and nftables)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// This goroutine's thread moves to a new network namespace and dies with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("creating a network namespace: %v", err)
			return
		}
		redirected(t)
	}()
	<-done
}

func redirected(t *testing.T) {
	setupLinks(t)
	if err := netinit.Apply(netinit.Options{ProxyUID: 4242, InboundPort: 15006, OutboundPort: 15001}); err != nil {
		t.Error(err)
		return
	}
	for _, c := range []struct{ listen, dial string }{
		{"127.0.0.1:15001", "192.0.2.99:80"},
		{"[::1]:15001", "[2001:db8::99]:8443"},
		// A dual-stack listener gets both.
		{"[::]:15001", "192.0.2.99:81"},
		{"[::]:15001", "[2001:db8::99]:8444"},
	} {
		lis, err := net.Listen("tcp", c.listen)
		if err != nil {
			t.Error(err)
			return
		}
		conn := accept(t, lis, c.dial)
		_ = lis.Close()
		dst, err := origdst.Get(conn)
		if err != nil || dst != netip.MustParseAddrPort(c.dial) {
			t.Errorf("a connection to %s redirected to %s: Get = %s, %v; want %s", c.dial, c.listen, dst, err, c.dial)
		}
	}
}

// setupLinks brings loopback up, and a link with 192.0.2.1/24 and 2001:db8::1/64,
// so that 192.0.2.99 and 2001:db8::99 are routable but not local.
func setupLinks(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	// A veth pair whose other end stays in the namespace, down: the kernel here may lack
	// dummy links.
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}
	if err == nil {
		err = netlink.LinkAdd(link)
	}
	for _, a := range []string{"192.0.2.1/24", "2001:db8::1/64"} {
		if err == nil {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = unix.IFA_F_NODAD
			err = netlink.AddrAdd(link, addr)
		}
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		t.Fatalf("setting up the namespace's links: %v", err)
	}
}
