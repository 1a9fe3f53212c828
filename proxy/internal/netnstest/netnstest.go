// Package netnstest runs test code in a network namespace of its own, whose loopback the
// test can take down to make a peer vanish without a FIN or RST. It needs root.
package netnstest

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Run runs fn on a thread in a new network namespace with its loopback up, and returns
// its error; it skips tb when the process may not create network namespaces (it needs
// root). Sockets fn creates belong to that namespace, whichever threads use them
// later; the thread itself is never unlocked, so it ends with fn and no other goroutine
// runs in the namespace.
func Run(tb testing.TB, fn func() error) error {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for a network namespace of its own")
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		if err := SetLoopback(true); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// SetLoopback brings the loopback of the calling thread's network namespace up or down;
// call it from fn in Run.
func SetLoopback(up bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd) //nolint:errcheck // a datagram socket with nothing to flush
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("ifreq: %w", err)
	}
	var flags uint16
	if up {
		flags = unix.IFF_UP | unix.IFF_RUNNING
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("setting lo up=%v: %w", up, err)
	}
	return nil
}

// SendIntoSilence takes the loopback down under c, writes to it and returns the error of
// a read that waits at most wait for an answer: with the peer unreachable, the data stays
// unacknowledged. Call it from fn in Run.
func SendIntoSilence(c net.Conn, wait time.Duration) error {
	if err := SetLoopback(false); err != nil {
		return err
	}
	if _, err := c.Write([]byte("are you there?")); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return fmt.Errorf("read deadline: %w", err)
	}
	_, err := c.Read(make([]byte, 1))
	return err
}
