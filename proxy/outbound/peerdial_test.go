package outbound

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/netnstest"
)

// A peer that vanishes without a FIN or RST (here: the loopback goes down) fails a
// connection the client proxy dialled, with data in flight, after the user timeout,
// where the kernel would otherwise retransmit for about 15 minutes.
func TestPeerConnectionGivesUpOnASilentPeer(t *testing.T) {
	const userTimeout = time.Second
	err := netnstest.Run(t, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close() //nolint:errcheck // test
		go holdOne(t.Context(), ln)
		c, err := peerDialer(userTimeout).DialContext(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close() //nolint:errcheck // test
		return netnstest.SendIntoSilence(c, 20*userTimeout)
	})
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("reading from a peer that went silent with data in flight: %v, want the connection timed out (ETIMEDOUT)", err)
	}
}

// holdOne accepts one connection and keeps it open, reading nothing, until ctx ends.
func holdOne(ctx context.Context, ln net.Listener) {
	if c, err := ln.Accept(); err == nil {
		<-ctx.Done()
		_ = c.Close()
	}
}
