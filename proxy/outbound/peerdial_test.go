package outbound

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A peer that vanishes without a FIN or RST (here: its link goes down) fails a connection
// with data in flight after the user timeout, where the kernel would otherwise retransmit
// for about 15 minutes. Runs in a network namespace of its own, so as root only.
func TestPeerConnectionGivesUpOnASilentPeer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	const userTimeout = time.Second
	done := make(chan error, 1)
	go func() {
		// The thread enters a new network namespace and dies with the goroutine (it is
		// never unlocked), so no other goroutine runs in that namespace.
		runtime.LockOSThread()
		done <- silentPeer(t.Context(), userTimeout)
	}()
	err := <-done
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("reading from a peer that went silent with data in flight: %v, want the connection timed out (ETIMEDOUT)", err)
	}
}

// silentPeer connects to a server on the loopback of a new network namespace, takes the
// loopback down, sends data and returns the error of the read that waits for an answer.
func silentPeer(ctx context.Context, userTimeout time.Duration) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	if err := setLoopback(true); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close() //nolint:errcheck // test
	go func() {
		if c, err := ln.Accept(); err == nil {
			<-ctx.Done()
			_ = c.Close()
		}
	}()
	c, err := peerDialer(userTimeout).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close() //nolint:errcheck // test
	if err := setLoopback(false); err != nil {
		return err
	}
	if _, err := c.Write([]byte("are you there?")); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * userTimeout))
	_, err = c.Read(make([]byte, 1))
	return err
}

// setLoopback brings the loopback interface of the thread's namespace up or down.
func setLoopback(up bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd) //nolint:errcheck // test
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	var flags uint16
	if up {
		flags = unix.IFF_UP | unix.IFF_RUNNING
	}
	ifr.SetUint16(flags)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
