// Package h2client is a lean HTTP/2 client, an http.RoundTripper, for the proxy's
// proxy-to-proxy traffic: a client braid-proxy sends each meshed request to the peer
// proxy over HTTP/2 and mTLS.
//
// Why it exists. Measured at 1000 requests per second on one pinned core, the client
// proxy cost 118 µs of CPU per request with net/http's HTTP/2 Transport, about half of it
// in the kernel. Removable costs in that client: a new goroutine per request that writes
// the HEADERS frame, hand-offs between the read loop and the caller, and a
// connection-level WINDOW_UPDATE written every 4 KiB of response data consumed, which
// with 1 KB answers is an extra write system call every few requests on the client and
// an extra wake-up of the server proxy.
//
// What it does instead. The caller's goroutine encodes and writes the HEADERS frame (with
// END_STREAM when there is no body) under the connection's write lock and flushes once;
// a goroutine is started only for a request that has a body, to stream it under flow
// control while the response is read. One goroutine per connection reads frames
// (golang.org/x/net/http2's Framer) and decodes header blocks with x/net's hpack.Decoder
// straight into the response's http.Header, with the checks the Framer would make. The
// client advertises large receive windows (4 MiB per stream, 1 GiB for the connection)
// and returns credit only once half a window has been consumed, so small answers cause
// no WINDOW_UPDATE at all. Response data waits in buffers from a pool, returned once read.
//
// A request whose context ends is reset (RST_STREAM CANCEL) by RoundTrip while it waits
// for the response headers, and by the body's Read while it waits for data or when it is
// called next: no goroutine or context.AfterFunc watches the context. A body nobody reads
// any more is reset at Close, which every caller must call.
//
// Connections are pooled per address, reused while they have stream capacity, dialled one
// at a time per address, and dropped after GOAWAY or an error. Requests the server did not
// process (after GOAWAY or REFUSED_STREAM) are sent again when their body can be. A write
// that cannot complete for 30 s (a server that stopped reading) fails its connection.
//
// It does not do server push, stream priorities, h2c (cleartext HTTP/2), CONNECT, or
// HTTP/1.1: DialTLS must return a connection that negotiated "h2".
package h2client
