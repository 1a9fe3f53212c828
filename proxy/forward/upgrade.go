package forward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// switchProtocols completes a protocol upgrade the upstream accepted: it answers the
// client with the 101, then copies the client's connection and the upstream's both ways
// until either ends, or the request's context does.
func switchProtocols(w http.ResponseWriter, out *http.Request, res *http.Response, x Exchange) {
	asked, got := UpgradeType(out.Header), UpgradeType(res.Header)
	switch {
	case !isPrint(got):
		_ = res.Body.Close()
		x.Failed(w, out, fmt.Errorf("the upstream switched to the invalid protocol %q", got))
		return
	case !strings.EqualFold(asked, got):
		_ = res.Body.Close()
		x.Failed(w, out, fmt.Errorf("the upstream switched to protocol %q where the client asked for %q", got, asked))
		return
	}
	upstream, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		_ = res.Body.Close()
		x.Failed(w, out, errNotWritable)
		return
	}
	defer upstream.Close() //nolint:errcheck // the copy's end is what matters
	stop := context.AfterFunc(out.Context(), func() { _ = upstream.Close() })
	defer stop()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		x.Failed(w, out, fmt.Errorf("taking over the client's connection to switch protocols: %w", err))
		return
	}
	defer conn.Close() //nolint:errcheck // as above
	if err := writeSwitch(brw, w.Header(), res); err != nil {
		return // the client went away
	}
	splice(conn, brw.Reader, upstream)
}

// writeSwitch writes the 101 answer, with the upstream's headers, to the hijacked
// connection.
func writeSwitch(brw *bufio.ReadWriter, h http.Header, res *http.Response) error {
	for k, vv := range res.Header {
		h[k] = append(h[k], vv...)
	}
	res.Header, res.Body = h, nil // res.Write then writes the head only
	if err := res.Write(brw); err != nil {
		return fmt.Errorf("writing the 101 answer: %w", err)
	}
	if err := brw.Flush(); err != nil {
		return fmt.Errorf("writing the 101 answer: %w", err)
	}
	return nil
}

// splice copies client (whose first bytes may wait in buffered) to upstream and upstream
// to client. A direction that ends cleanly half-closes its destination when it can, and
// the other goes on; a failure, or an end that cannot be passed on, ends both.
func splice(client net.Conn, buffered io.Reader, upstream io.ReadWriter) {
	ended := make(chan bool, 2)
	go func() { ended <- pass(upstream, buffered) }()
	go func() { ended <- pass(client, upstream) }()
	if <-ended {
		<-ended
	}
}

// pass copies src to dst until src ends, then half-closes dst; it reports whether both
// went well, so that the other direction may go on.
func pass(dst io.Writer, src io.Reader) bool {
	if _, err := io.Copy(dst, src); err != nil {
		return false
	}
	cw, ok := dst.(interface{ CloseWrite() error })
	return ok && cw.CloseWrite() == nil
}
