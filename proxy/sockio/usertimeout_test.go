package sockio_test

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/netnstest"
	"github.com/braidmesh/braid/proxy/sockio"
)

// A listener's accepted connections inherit its TCP_USER_TIMEOUT: a server side whose
// client vanishes without a FIN or RST (the loopback goes down) fails the connection, with
// data in flight, after the timeout rather than after the kernel's 15 minutes.
func TestAcceptedConnectionsInheritTheUserTimeout(t *testing.T) {
	const userTimeout = time.Second
	err := netnstest.Run(t, func() error {
		lc := net.ListenConfig{Control: sockio.UserTimeout(userTimeout)}
		ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close() //nolint:errcheck // test
		client, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer client.Close() //nolint:errcheck // test
		server, err := ln.Accept()
		if err != nil {
			return err
		}
		defer server.Close() //nolint:errcheck // test
		return netnstest.SendIntoSilence(server, 20*userTimeout)
	})
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("reading on an accepted connection whose client went silent: %v, want ETIMEDOUT", err)
	}
}
