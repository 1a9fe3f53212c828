package sockio_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/h2test"
	"github.com/braidmesh/braid/proxy/internal/polltest"
	"github.com/braidmesh/braid/proxy/sockio"
)

// pair returns a wrapped client connection and the plain server end of a loopback TCP
// connection.
func pair(t *testing.T) (net.Conn, *net.TCPConn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := lis.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := (<-accepted).(*net.TCPConn)
	w := sockio.Wrap(c)
	if _, ok := w.(*sockio.Conn); !ok {
		t.Fatalf("Wrap returned %T, want *sockio.Conn", w)
	}
	t.Cleanup(func() { _ = w.Close(); _ = s.Close() })
	return w, s
}

// TestLargeTransfersBothWays moves more than the sockets' buffers hold in each direction,
// so that writes meet EAGAIN and wait for room, and reads wait for data.
func TestLargeTransfersBothWays(t *testing.T) {
	c, s := pair(t)
	out, in := make([]byte, 8<<20), make([]byte, 8<<20)
	_, _ = rand.Read(out)
	_, _ = rand.Read(in)
	var wg sync.WaitGroup
	var gotByPeer, gotByConn []byte
	var peerErr, connErr error
	wg.Add(4)
	go func() { defer wg.Done(); _, peerErr = s.Write(in) }()
	go func() { defer wg.Done(); gotByPeer, _ = io.ReadAll(io.LimitReader(s, int64(len(out)))) }()
	go func() { defer wg.Done(); gotByConn, connErr = io.ReadAll(io.LimitReader(c, int64(len(in)))) }()
	go func() {
		defer wg.Done()
		n, err := c.Write(out)
		if err != nil || n != len(out) {
			t.Errorf("Write = %d, %v; want %d, nil", n, err, len(out))
		}
	}()
	wg.Wait()
	if peerErr != nil || connErr != nil {
		t.Fatalf("peer write: %v, wrapped read: %v", peerErr, connErr)
	}
	if !bytes.Equal(gotByPeer, out) || !bytes.Equal(gotByConn, in) {
		t.Fatal("the bytes that arrived differ from the bytes sent")
	}
}

func TestReadReturnsEOFWhenThePeerCloses(t *testing.T) {
	c, s := pair(t)
	if _, err := s.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want \"bye\", nil (io.EOF ends it)", got, err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline = %v; want a timeout (os.ErrDeadlineExceeded)", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Source == nil || oe.Addr == nil {
		t.Fatalf("error %#v; want a *net.OpError for op read naming both addresses", err)
	}
}

// net/http ends every request's background read with a past deadline: the error that
// read returns is the one net makes, renamed, and no second.
func TestReadPastADeadlineMakesOneError(t *testing.T) {
	if h2test.RaceEnabled {
		t.Skip("the race detector allocates")
	}
	c, _ := pair(t)
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if n := testing.AllocsPerRun(100, func() { _, _ = c.Read(buf) }); n > 1 {
		t.Errorf("a read past its deadline made %.0f allocations, want the one error", n)
	}
}

func TestWriteDeadlineWhenThePeerDoesNotRead(t *testing.T) {
	c, _ := pair(t)
	if err := c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Write(make([]byte, 64<<20)) // more than any socket buffer holds
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want a timeout", n, err)
	}
	if n == 0 || n >= 64<<20 {
		t.Fatalf("Write reported %d bytes written; want the part the buffers took", n)
	}
}

func TestClosedConnSaysErrClosed(t *testing.T) {
	c, _ := pair(t)
	_ = c.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v; want net.ErrClosed", err)
	}
}

// TestCloseUnblocksARead: a Read waiting for data ends when another goroutine closes the
// connection, as the HTTP servers rely on.
func TestCloseUnblocksARead(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the Read reach the poller; the result holds either way
	_ = c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read after Close = %v; want net.ErrClosed", err)
	}
}

func TestResetIsECONNRESET(t *testing.T) {
	c, s := pair(t)
	if err := s.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	_ = s.Close() // linger 0: the kernel sends a RST
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after the peer's reset = %v; want ECONNRESET", err)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "read" {
		t.Fatalf("error %#v; want an *os.SyscallError of read inside", err)
	}
}

// TestConcurrentReadersAndWriters: net.Conn allows Reads and Writes from many goroutines;
// every byte written arrives once (run with -race).
func TestConcurrentReadersAndWriters(t *testing.T) {
	c, s := pair(t)
	const writers, each = 8, 1000
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				if _, err := c.Write([]byte("0123456789")); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	echoed := make(chan int64, 1)
	go func() { n, _ := io.Copy(s, io.LimitReader(s, writers*each*10)); echoed <- n }()
	var total int64
	var mu sync.Mutex
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				mu.Lock()
				total += int64(n)
				done := total >= writers*each*10
				mu.Unlock()
				if err != nil || done {
					return
				}
			}
		})
	}
	wg.Wait()
	if n := <-echoed; n != writers*each*10 {
		t.Fatalf("the peer echoed %d bytes; want %d", n, writers*each*10)
	}
	_ = s.CloseWrite()
	readers.Wait()
	if total != writers*each*10 {
		t.Fatalf("readers got %d bytes; want %d", total, writers*each*10)
	}
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	if got := sockio.Wrap(a); got != a {
		t.Fatalf("Wrap(pipe) = %T; want the pipe itself", got)
	}
	if _, ok := sockio.Unwrap(a); ok {
		t.Fatal("Unwrap(pipe) found a TCP connection")
	}
}

func TestCloseWriteHalfCloses(t *testing.T) {
	c, s := pair(t)
	if _, ok := sockio.Unwrap(c); !ok {
		t.Fatal("Unwrap found no TCP connection")
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("peer Read after CloseWrite = %d, %v; want EOF", n, err)
	}
	if _, err := s.Write([]byte("still open")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still open" {
		t.Fatalf("read after half-close = %q, %v", buf, err)
	}
}

// CheckIdle tells an idle connection from one its peer closed, or wrote to unasked, and
// leaves the bytes it peeked for the next Read.
func TestCheckIdle(t *testing.T) {
	c, s := pair(t)
	if err := sockio.CheckIdle(c); err != nil {
		t.Fatalf("an open, quiet connection: %v", err)
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, func() bool { return sockio.CheckIdle(c) != nil })
	if err := sockio.CheckIdle(c); !errors.Is(err, sockio.ErrNotIdle) {
		t.Fatalf("a connection with unread bytes: %v, want ErrNotIdle", err)
	}
	if b := make([]byte, 1); !readsOne(c, b) || b[0] != 'x' {
		t.Fatalf("the peeked byte was consumed: %q", b)
	}
	plain, s2 := pair(t)
	tc, _ := sockio.Unwrap(plain)
	_ = s2.Close()
	for _, conn := range []net.Conn{c, tc} {
		if conn == c {
			_ = s.Close()
		}
		polltest.Until(t, func() bool { return sockio.CheckIdle(conn) != nil })
		if err := sockio.CheckIdle(conn); !errors.Is(err, sockio.ErrNotIdle) {
			t.Fatalf("%T whose peer closed: %v, want ErrNotIdle", conn, err)
		}
	}
}

// Checking a wrapped connection, which every pooled connection of the proxy is, does not
// allocate: it happens before each request on a kept-alive connection.
func TestCheckIdleAllocatesNothing(t *testing.T) {
	c, _ := pair(t)
	if n := testing.AllocsPerRun(100, func() { _ = sockio.CheckIdle(c) }); n != 0 {
		t.Errorf("CheckIdle allocates %v times, want 0", n)
	}
}

func readsOne(c net.Conn, b []byte) bool {
	n, err := c.Read(b)
	return n == 1 && err == nil
}
