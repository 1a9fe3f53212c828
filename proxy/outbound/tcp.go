package outbound

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// Dialer opens the proxy's upstream TCP connections for opaque traffic: to an endpoint
// of a Service, or, for a passthrough connection, to its original destination (an
// Endpoint with only Addr set).
type Dialer interface {
	// DialEndpoint connects to ep, giving up when ctx ends (the proxy's connect timeout).
	// ep.Addr is the address, port included, the application connection is for. A
	// meshed endpoint (ep.Meshed()) is to be reached through its peer proxy at
	// ep.ProxyAddr() over mTLS, verifying that the peer presents ep.Identity, and telling
	// it ep.Addr's port; a plaintext one straight at ep.Addr. The connection returned
	// should support CloseWrite (as *net.TCPConn and *tls.Conn do), so that half-closes
	// carry through.
	DialEndpoint(ctx context.Context, ep router.Endpoint) (net.Conn, error)
}

// PlainDialer dials every endpoint at its address, in plaintext: meshed endpoints too.
type PlainDialer struct{}

// DialEndpoint connects to ep.Addr.
func (PlainDialer) DialEndpoint(ctx context.Context, ep router.Endpoint) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", ep.Addr.String())
}

var copyBuffers = sync.Pool{New: func() any { return new([copyBufferSize]byte) }}

// closeWriter is a connection whose sending half closes alone.
type closeWriter interface{ CloseWrite() error }

// pipe copies between client and upstream both ways until both directions end. An end of
// stream in one direction closes the sending half of the other side (a half-close
// carries through); an error in either aborts both, with a reset to the client.
func pipe(client *net.TCPConn, upstream net.Conn, rec *telemetry.TCPConn) {
	errs := make(chan error, 1)
	go func() { errs <- copyHalf(upstream, client, rec.Sent) }()
	err := copyHalf(client, upstream, rec.Received)
	if err != nil {
		abort(client, upstream)
	}
	if err := <-errs; err != nil {
		abort(client, upstream)
	}
	_ = client.Close()
	_ = upstream.Close()
}

// copyHalf copies src to dst, counting the bytes, and closes dst's sending half at the
// end of src.
func copyHalf(dst, src net.Conn, count func(int)) error {
	buf := copyBuffers.Get().(*[copyBufferSize]byte)
	defer copyBuffers.Put(buf)
	for {
		n, err := src.Read(buf[:])
		if n > 0 {
			count(n)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			if cw, ok := dst.(closeWriter); ok {
				return cw.CloseWrite()
			}
			return dst.Close()
		case err != nil:
			return err
		}
	}
}

// abort ends both connections at once; the client gets a reset, as it would from the
// destination itself.
func abort(client *net.TCPConn, upstream net.Conn) {
	_ = client.SetLinger(0)
	_ = client.Close()
	_ = upstream.Close()
}

// refuse ends a client connection the proxy cannot forward with a reset: what the client
// would get from a destination that refused it.
func refuse(client *net.TCPConn) {
	_ = client.SetLinger(0)
	_ = client.Close()
}
