// Package h2hdr decodes HTTP/2 header blocks (a HEADERS frame and its CONTINUATION
// frames) straight into an http.Header, for the proxy's HTTP/2 client and server. It makes
// the checks x/net's Framer makes when it decodes a block into a MetaHeadersFrame (RFC 9113
// sections 8.2 and 8.3), without building the MetaHeadersFrame: the header list size,
// pseudo-header fields (known, not repeated, before the regular ones, not both request
// and response ones), and valid, lower-case field names and values. What a request or a
// response may carry beyond that is for the caller to judge.
package h2hdr

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// tableSize is the HPACK dynamic table size: the protocol's initial one, which
	// neither end of the proxy's connections changes.
	tableSize = 4096
	// maxHint bounds the header map size a block is given from the previous block's.
	maxHint = 32
)

// ConnError is a header block that must end the connection with a GOAWAY: one that
// cannot be decoded (COMPRESSION_ERROR: the HPACK state is lost), or that is interrupted,
// goes on after a malformed field or runs far beyond the size limit (PROTOCOL_ERROR).
type ConnError struct {
	Code   http2.ErrCode
	Reason string // fit for a GOAWAY's debug data
}

func (e ConnError) Error() string {
	return fmt.Sprintf("HTTP/2 connection error %v: %s", e.Code, e.Reason)
}

// Decoder decodes one connection's header blocks, in order: the HPACK state carries from
// one block to the next. It is for one goroutine, the connection's reader.
type Decoder struct {
	hpack     *hpack.Decoder
	maxList   uint32
	onRegular func(name, value string) bool
	canon     NameCache // field name on the wire → canonical key

	blk        Block
	remain     uint32 // header list bytes left
	sawRegular bool
	invalid    error // a field that makes the block malformed; decoding stops
	pseudoErr  error // a pseudo-header problem, reported once the block is decoded
	vals       []string
	hint       int // the previous block's regular fields
}

// NewDecoder returns a decoder for header lists of at most maxList bytes, counted as
// SETTINGS_MAX_HEADER_LIST_SIZE counts them (RFC 9113 section 6.5.2). onRegular, when not
// nil, is called with each valid regular field within the limit, in order; the field
// joins Block.Header only when it returns true.
func NewDecoder(maxList uint32, onRegular func(name, value string) bool) *Decoder {
	d := &Decoder{maxList: maxList, onRegular: onRegular, canon: NewNameCache(textproto.CanonicalMIMEHeaderKey)}
	d.hpack = hpack.NewDecoder(tableSize, d.emit)
	d.hpack.SetMaxStringLength(int(min(maxList, 1<<30)))
	return d
}

// Read decodes the header block f starts, reading its CONTINUATION frames from fr. The
// Block is the decoder's own until the next Read; its Header is the caller's. A malformed
// block is an http2.StreamError (PROTOCOL_ERROR); a block that must end the connection,
// a ConnError; an error reading a CONTINUATION frame is returned wrapped.
func (d *Decoder) Read(fr *http2.Framer, f *http2.HeadersFrame) (*Block, error) {
	d.begin(f)
	frag, end := f.HeaderBlockFragment(), f.HeadersEnded()
	for {
		if err := d.write(frag); err != nil {
			return nil, err
		}
		if end {
			break
		}
		next, err := fr.ReadFrame()
		if err != nil {
			return nil, fmt.Errorf("reading CONTINUATION: %w", err)
		}
		cf, ok := next.(*http2.ContinuationFrame) // the framer refuses any other frame here
		if !ok || cf.StreamID != d.blk.StreamID {
			return nil, ConnError{http2.ErrCodeProtocol, "header block interrupted"}
		}
		frag, end = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	return d.end()
}

// Canonical returns the http.Header key of a field name from the wire, from a bounded
// cache.
func (d *Decoder) Canonical(name string) string { return d.canon.Get(name) }

func (d *Decoder) begin(f *http2.HeadersFrame) {
	d.blk = Block{StreamID: f.StreamID, Ended: f.StreamEnded(), Header: make(http.Header, d.hint)}
	d.remain = d.maxList
	d.sawRegular, d.invalid, d.pseudoErr = false, nil, nil
	d.vals = nil
	d.hpack.SetEmitEnabled(true)
}

// write decodes one fragment, refusing one far beyond the limit or following a malformed
// field (x/net's rules: the peer gets no chance to keep us decoding).
func (d *Decoder) write(frag []byte) error {
	if int64(len(frag)) > 2*int64(d.remain) {
		return ConnError{http2.ErrCodeProtocol, "header block far beyond the header list limit"}
	}
	if d.invalid != nil {
		return ConnError{http2.ErrCodeProtocol, "header block goes on after a malformed field"}
	}
	if _, err := d.hpack.Write(frag); err != nil {
		return ConnError{http2.ErrCodeCompression, "undecodable header block: " + err.Error()}
	}
	return nil
}

func (d *Decoder) end() (*Block, error) {
	if err := d.hpack.Close(); err != nil {
		return nil, ConnError{http2.ErrCodeCompression, "undecodable header block: " + err.Error()}
	}
	d.hint = min(len(d.blk.Header), maxHint)
	err := d.invalid
	if err == nil {
		err = d.pseudoErr
	}
	if err == nil && d.blk.Pseudo&Status != 0 && d.blk.Pseudo&Request != 0 {
		err = errMixedPseudo
	}
	if err != nil {
		return nil, http2.StreamError{StreamID: d.blk.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &d.blk, nil
}

// emit takes one decoded field.
func (d *Decoder) emit(hf hpack.HeaderField) {
	pseudo := strings.HasPrefix(hf.Name, ":")
	if err := d.check(hf, pseudo); err != nil {
		d.invalid = err
		d.hpack.SetEmitEnabled(false)
		return
	}
	size := hf.Size()
	if size > d.remain {
		d.blk.Truncated = true
		d.remain = 0
		d.hpack.SetEmitEnabled(false)
		return
	}
	d.remain -= size
	if pseudo {
		d.addPseudo(hf)
		return
	}
	if d.onRegular == nil || d.onRegular(hf.Name, hf.Value) {
		d.add(hf.Name, hf.Value)
	}
}

// check refuses an invalid value, a pseudo-header after a regular field, and an invalid
// (or upper-case) field name.
func (d *Decoder) check(hf hpack.HeaderField, pseudo bool) error {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		return fmt.Errorf("invalid value for header field %q", hf.Name) // the value may be secret
	}
	if pseudo {
		if d.sawRegular {
			return errPseudoAfterRegular
		}
		return nil
	}
	d.sawRegular = true
	if !validName(hf.Name) {
		return fmt.Errorf("invalid header field name %q", hf.Name)
	}
	return nil
}

// add appends a regular field's value to the block's header. Single values share one
// backing array per block.
func (d *Decoder) add(name, value string) {
	k := d.Canonical(name)
	h := d.blk.Header
	if prev, ok := h[k]; ok {
		h[k] = append(prev, value)
		return
	}
	if len(d.vals) == cap(d.vals) {
		d.vals = make([]string, 0, max(d.hint, 4))
	}
	d.vals = append(d.vals, value)
	n := len(d.vals)
	h[k] = d.vals[n-1 : n : n]
}
