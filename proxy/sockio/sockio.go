// Package sockio gives the proxy's TCP connections reads and writes that do not go
// through the Go scheduler's system call hand-off.
//
// A *net.TCPConn's Read and Write enter the kernel with syscall.Syscall, which tells the
// scheduler that the goroutine may block: the first such call after the process was idle
// wakes the runtime's monitor thread (sysmon), which then polls every 20 µs for a while and
// takes the processor away from any system call that outlasts a poll, waking another
// thread to run it. A proxy pinned to one core, woken by every request at a moderate rate,
// spends most of its context switches on that dance (measured: two thirds of them at
// 1000 requests per second). The sockets are non-blocking, so a read or write returns at
// once with the data or EAGAIN; sockio makes those calls with syscall.RawSyscall, inside
// the descriptor's syscall.RawConn, and waits for readiness through the runtime's network
// poller as net does. Deadlines, Close and the errors callers test for behave as with
// net.TCPConn.
package sockio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn is a TCP connection whose Read and Write are raw non-blocking system calls. Every
// other method is the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	raw syscall.RawConn

	rmu     sync.Mutex // one Read at a time: the fields below carry its state
	rbuf    []byte
	rn      int
	rerrno  syscall.Errno
	readFn  func(uintptr) bool
	peekFn  func(uintptr) bool
	peekBuf [1]byte
	wmu     sync.Mutex // one Write at a time
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(uintptr) bool
}

// Wrap returns c with raw reads and writes, or c itself when it is not a TCP connection
// whose descriptor can be reached.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{TCPConn: tc, raw: raw}
	w.readFn, w.writeFn, w.peekFn = w.read, w.write, w.peek
	return w
}

// Unwrap returns the *net.TCPConn under c, if there is one.
func Unwrap(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *Conn:
		return c.TCPConn, true
	case *net.TCPConn:
		return c, true
	}
	return nil, false
}

// Read reads up to len(b) bytes, waiting for data through the network poller.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerrno = b, 0, 0
	err := c.raw.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn callback of Read: false means "wait until readable".
func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rerrno = errno
		return true
	}
}

// Write writes all of b, waiting for room in the socket's buffer through the network
// poller.
func (c *Conn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werrno = b, 0, 0
	err := c.raw.Write(c.writeFn)
	n, errno := c.wn, c.werrno
	c.wbuf = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write is the RawConn callback of Write: false means "wait until writable".
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		p := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch errno {
		case 0:
			c.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.werrno = errno
		return true
	}
	return true
}

// opError words err as net does for op: an *net.OpError naming both addresses. The
// RawConn already wraps its own errors (deadlines, a closed connection) so, in an
// *net.OpError made for this call alone: that one takes op's name, and no second is
// made (a read cut short by a past deadline is how net/http ends every request's
// background read).
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { //nolint:errorlint // RawConn returns it unwrapped; errors.As allocates
		oe.Op = op
		return oe
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// DialContext returns d.DialContext with its TCP connections wrapped.
func DialContext(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(c), nil
	}
}

// ErrNotIdle says a connection kept for reuse was closed by its peer, or has bytes to
// read that nobody asked for.
var ErrNotIdle = errors.New("the idle connection was closed by its peer or has unexpected data")

// CheckIdle reports whether c, a connection kept idle for reuse, still is: open, with
// nothing to read. It peeks without waiting, so a connection the peer closed while it
// sat in a pool is found before a request is written to it.
func CheckIdle(c net.Conn) error {
	var raw syscall.RawConn
	switch c := c.(type) {
	case *Conn:
		return c.checkIdle() // with the Conn's own buffer and callback: no allocation
	case *net.TCPConn:
		r, err := c.SyscallConn()
		if err != nil {
			return fmt.Errorf("checking an idle connection: %w", err)
		}
		raw = r
	default:
		return nil // nothing to peek with: the first read will tell
	}
	var errno syscall.Errno
	var b [1]byte
	err := raw.Read(func(fd uintptr) bool {
		errno = peek(fd, &b)
		return true // never wait
	})
	return idle(err, errno)
}

func (c *Conn) checkIdle() error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rerrno = 0
	err := c.raw.Read(c.peekFn)
	return idle(err, c.rerrno)
}

// peek is the RawConn callback of checkIdle; it never waits.
func (c *Conn) peek(fd uintptr) bool {
	c.rerrno = peek(fd, &c.peekBuf)
	return true
}

// peek looks at the next byte to read from fd into b, without taking it or waiting.
// Only its error matters: a byte and the end of the stream both say "not idle".
func peek(fd uintptr, b *[1]byte) syscall.Errno {
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno
}

// idle words what a peek at an idle connection found: EAGAIN (nothing to read) is the
// only answer that says it is idle; a byte or the end of the stream (no error) is not.
func idle(err error, errno syscall.Errno) error {
	switch {
	case err != nil:
		return fmt.Errorf("checking an idle connection: %w", err)
	case errno == syscall.EAGAIN:
		return nil
	case errno != 0:
		return fmt.Errorf("%w: %w", ErrNotIdle, os.NewSyscallError("recvfrom", errno))
	}
	return ErrNotIdle // read 0 (the peer closed) or a byte nobody asked for
}
