package sockio

import (
	"cmp"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PeerUserTimeout is how long the proxy lets data it sent to a peer proxy, or a keepalive
// probe, go unacknowledged before the connection fails. A peer lost without a FIN or RST
// (its node gone, a partition) would otherwise hold a connection for the kernel's
// retransmission limit, about 15 minutes, or, idle, for the nine keepalive probes after
// the first.
const PeerUserTimeout = 30 * time.Second

// UserTimeout returns a net.Dialer or net.ListenConfig Control function that sets
// TCP_USER_TIMEOUT to d on the socket (a listener's accepted connections inherit it).
func UserTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
		})
		if err = cmp.Or(err, serr); err != nil {
			return fmt.Errorf("setting TCP_USER_TIMEOUT: %w", err)
		}
		return nil
	}
}
