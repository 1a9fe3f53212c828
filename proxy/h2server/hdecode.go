package h2server

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"

	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

// headerBlock is a header block from the client, as h2hdr decoded it, with what the
// server notes of its regular fields. The reader reuses it for the next block.
type headerBlock struct {
	*h2hdr.Block
	cookies []string // cookie fields, joined in a request (RFC 9113 section 8.2.3)
	// fieldErr is the first field a request must not carry: a connection-specific one,
	// or te other than "trailers" (RFC 9113 section 8.2.2).
	fieldErr error
}

// blockReader decodes the client's header blocks; Block.Header gets the regular fields
// but cookies. Used by the reader goroutine only.
type blockReader struct {
	dec *h2hdr.Decoder
	blk headerBlock
}

func newBlockReader(maxList uint32) *blockReader {
	r := &blockReader{}
	r.dec = h2hdr.NewDecoder(maxList, r.regular)
	return r
}

// read decodes the header block f starts, reading its CONTINUATION frames from fr. A
// malformed block is a stream error; one that cannot be decoded, or runs far beyond the
// size limit, a connection error (connError).
func (r *blockReader) read(fr *http2.Framer, f *http2.HeadersFrame) (*headerBlock, error) {
	r.blk = headerBlock{}
	b, err := r.dec.Read(fr, f)
	if err != nil {
		var ce h2hdr.ConnError
		if errors.As(err, &ce) {
			return nil, connError{ce.Code, ce.Reason}
		}
		return nil, err
	}
	r.blk.Block = b
	return &r.blk, nil
}

// regular takes a regular field: cookies are kept apart, and the fields a request must
// not carry are noted (they are allowed, if useless, in trailers).
func (r *blockReader) regular(name, value string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		r.noteFieldErr(fmt.Errorf("h2server: connection-specific header %q", name))
	case "te":
		if value != "trailers" {
			r.noteFieldErr(fmt.Errorf("h2server: te %q is not \"trailers\"", value))
		}
	case "cookie":
		r.blk.cookies = append(r.blk.cookies, value)
		return false
	}
	return true
}

func (r *blockReader) noteFieldErr(err error) {
	if r.blk.fieldErr == nil {
		r.blk.fieldErr = err
	}
}
