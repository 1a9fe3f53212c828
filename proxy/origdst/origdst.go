// Package origdst reads where a redirected connection was going: the destination it had
// before netfilter's NAT (braid-init's redirect) sent it to the proxy.
package origdst

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h), which
// x/sys/unix does not define: the same number as SO_ORIGINAL_DST, at level SOL_IPV6.
const ip6tSoOriginalDst = 80

// ErrNotRedirected is returned (wrapped) when the kernel knows of no address translation
// for the connection: it reached the proxy directly.
var ErrNotRedirected = errors.New("the connection was not redirected")

// Get returns the original destination of a connection accepted by the proxy:
// SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6, from the connection's
// conntrack entry. A connection that was not translated returns its own local address, or
// ErrNotRedirected when conntrack does not track it at all.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v4 := local != nil && local.IP.To4() != nil
	var (
		dst  netip.AddrPort
		gerr error
	)
	err = raw.Control(func(fd uintptr) {
		if v4 {
			dst, gerr = get4(int(fd))
			if gerr == nil || errors.Is(gerr, unix.ENOENT) {
				return
			}
			// Perhaps an IPv4 connection on a dual-stack IPv6 socket: try the IPv6 way too.
		}
		dst, gerr = get6(int(fd))
	})
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	case errors.Is(gerr, unix.ENOENT):
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", ErrNotRedirected)
	case gerr != nil:
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", gerr)
	}
	return dst, nil
}

func get4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), nil
}

func get6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port)), nil
}

// getsockopt reads a socket option into the size bytes at p: x/sys/unix has no wrapper
// for options that fill a socket address.
func getsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// ntohs turns a port in network byte order, as a sockaddr holds it, into a number.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
