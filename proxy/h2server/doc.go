// Package h2server is a lean HTTP/2 server for the proxy's inbound mesh port: the
// connections a peer braid-proxy opens over mTLS and multiplexes its requests on.
//
// Why it exists. Profiles of a server proxy at 1000 requests per second, pinned to one
// core, showed Go's net/http HTTP/2 server as the largest removable cost. It writes every
// response's HEADERS frame from a new goroutine and makes the handler wait for it, then
// writes the body and END_STREAM: in the proxy a small response cost two write system
// calls, two TLS records and two wake-ups of the peer. Those short-lived goroutines, and
// each stream's own handler goroutine, grow their stacks again and again (morestack and
// copystack came to about 9% of the process), and a request crosses several channel
// hand-offs between the read loop, the serve loop and the handler. (Measured in this
// package's tests with Go 1.26: a 6 KB response takes net/http three writes and this
// server one; BenchmarkServer compares the two.)
//
// What it does instead. One goroutine per connection reads frames (golang.org/x/net/http2's
// Framer) and decodes header blocks with x/net's hpack.Decoder straight into the
// request's http.Header, with the checks the Framer would make. Handlers run on a pool
// of reused goroutines, which wait a while for the next stream when theirs ends, so
// their stacks stay grown. A handler writes its frames itself, under the connection's write
// mutex, into a buffered writer over the connection, and flushes once per response — when
// it returns or flushes explicitly — so a small response is one write: HEADERS and DATA
// with END_STREAM together. Responses that finish together share a write: a finishing
// writer leaves the flush to the next one already waiting for the lock.
//
// It serves requests with flow control both ways, request and response trailers,
// informational responses, streaming in both directions, graceful shutdown with GOAWAY,
// idle timeouts, a write timeout against peers that stop reading, and protection against
// streams opened faster than they finish (rapid reset). It does not do server push,
// stream priorities, the h2c upgrade from HTTP/1.1, or CONNECT (a CONNECT request is
// answered 405); it expects a connection whose TLS handshake already negotiated "h2".
package h2server
