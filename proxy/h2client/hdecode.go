package h2client

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxCachedNames bounds a connection's cache of canonical header keys.
const maxCachedNames = 256

var (
	errPseudoAfterRegular = errors.New("pseudo-header field after a regular one")
	errMixedPseudo        = errors.New("mix of request and response pseudo-header fields")
)

// Pseudo-header fields, as bits of blockReader.seen.
const (
	pseudoStatus uint8 = 1 << iota
	pseudoMethod
	pseudoScheme
	pseudoAuthority
	pseudoPath
	pseudoProtocol
	requestPseudos = pseudoMethod | pseudoScheme | pseudoAuthority | pseudoPath | pseudoProtocol
)

// headerBlock is one header block (a HEADERS frame and its CONTINUATION frames) as the
// read loop decoded it. The connection reuses it for the next block; header is new each
// time.
type headerBlock struct {
	streamID  uint32
	ended     bool   // END_STREAM
	truncated bool   // the header list went beyond the limit: fields are missing
	status    string // :status
	pseudos   int    // pseudo-header fields, :status included
	header    http.Header
}

// blockReader decodes header blocks straight into an http.Header, with the checks
// x/net's Framer makes when it decodes them into a MetaHeadersFrame (RFC 9113 section
// 8.2 and 8.3): the header list size, pseudo-header fields (known, not repeated, before
// the regular ones, not both request and response ones), and valid, lower-case field
// names and values. Used by the read loop only.
type blockReader struct {
	dec     *hpack.Decoder
	maxList uint32
	canon   map[string]string // header name on the wire → canonical key

	blk        headerBlock
	remain     uint32 // header list bytes left
	sawRegular bool
	seen       uint8 // pseudo-header fields seen
	invalid    error // a field that makes the block malformed; decoding stops
	pseudoErr  error // a pseudo-header problem, reported once the block is decoded
	vals       []string
	hint       int // the previous block's regular fields
}

func newBlockReader(maxList uint32) *blockReader {
	r := &blockReader{maxList: maxList, canon: map[string]string{}}
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(int(min(maxList, 1<<30)))
	return r
}

// read decodes the header block f starts, reading its CONTINUATION frames from fr. A
// malformed block is a stream error; one that cannot be decoded, or runs far beyond the
// size limit, a connection error.
func (r *blockReader) read(fr *http2.Framer, f *http2.HeadersFrame) (*headerBlock, error) {
	r.begin(f)
	frag, end := f.HeaderBlockFragment(), f.HeadersEnded()
	for {
		if err := r.write(frag); err != nil {
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
		if !ok || cf.StreamID != r.blk.streamID {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		frag, end = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	return r.end()
}

func (r *blockReader) begin(f *http2.HeadersFrame) {
	r.blk = headerBlock{streamID: f.StreamID, ended: f.StreamEnded(), header: make(http.Header, r.hint)}
	r.remain = r.maxList
	r.sawRegular, r.seen, r.invalid, r.pseudoErr = false, 0, nil, nil
	r.vals = nil
	r.dec.SetEmitEnabled(true)
}

// write decodes one fragment, refusing one far beyond the limit or following a
// malformed field (x/net's rules: the peer gets no chance to keep us decoding).
func (r *blockReader) write(frag []byte) error {
	if int64(len(frag)) > 2*int64(r.remain) || r.invalid != nil {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := r.dec.Write(frag); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	return nil
}

func (r *blockReader) end() (*headerBlock, error) {
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	r.hint = min(len(r.blk.header), 32)
	err := r.invalid
	if err == nil {
		err = r.pseudoErr
	}
	if err == nil && r.seen&pseudoStatus != 0 && r.seen&requestPseudos != 0 {
		err = errMixedPseudo
	}
	if err != nil {
		return nil, http2.StreamError{StreamID: r.blk.streamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &r.blk, nil
}

// emit takes one decoded field.
func (r *blockReader) emit(hf hpack.HeaderField) {
	pseudo := strings.HasPrefix(hf.Name, ":")
	if err := r.check(hf, pseudo); err != nil {
		r.invalid = err
		r.dec.SetEmitEnabled(false)
		return
	}
	size := hf.Size()
	if size > r.remain {
		r.blk.truncated = true
		r.remain = 0
		r.dec.SetEmitEnabled(false)
		return
	}
	r.remain -= size
	if pseudo {
		r.addPseudo(hf)
		return
	}
	r.add(hf.Name, hf.Value)
}

// check refuses an invalid value, a pseudo-header after a regular field, and an invalid
// (or upper-case) field name.
func (r *blockReader) check(hf hpack.HeaderField, pseudo bool) error {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		return fmt.Errorf("invalid value for header field %q", hf.Name) // the value may be secret
	}
	if pseudo {
		if r.sawRegular {
			return errPseudoAfterRegular
		}
		return nil
	}
	r.sawRegular = true
	if !validWireName(hf.Name) {
		return fmt.Errorf("invalid header field name %q", hf.Name)
	}
	return nil
}

func (r *blockReader) addPseudo(hf hpack.HeaderField) {
	r.blk.pseudos++
	var bit uint8
	switch hf.Name {
	case ":status":
		bit = pseudoStatus
		r.blk.status = hf.Value
	case ":method":
		bit = pseudoMethod
	case ":scheme":
		bit = pseudoScheme
	case ":authority":
		bit = pseudoAuthority
	case ":path":
		bit = pseudoPath
	case ":protocol":
		bit = pseudoProtocol
	default:
		r.setPseudoErr(fmt.Errorf("unknown pseudo-header field %q", hf.Name))
		return
	}
	if r.seen&bit != 0 {
		r.setPseudoErr(fmt.Errorf("duplicate pseudo-header field %q", hf.Name))
	}
	r.seen |= bit
}

func (r *blockReader) setPseudoErr(err error) {
	if r.pseudoErr == nil {
		r.pseudoErr = err
	}
}

// add appends a regular field's value to the block's header. Single values share one
// backing array per block.
func (r *blockReader) add(name, value string) {
	k := r.canonical(name)
	h := r.blk.header
	if prev, ok := h[k]; ok {
		h[k] = append(prev, value)
		return
	}
	if len(r.vals) == cap(r.vals) {
		r.vals = make([]string, 0, max(r.hint, 4))
	}
	r.vals = append(r.vals, value)
	n := len(r.vals)
	h[k] = r.vals[n-1 : n : n]
}

// canonical returns name's canonical key, from a bounded cache.
func (r *blockReader) canonical(name string) string {
	if k, ok := r.canon[name]; ok {
		return k
	}
	k := textproto.CanonicalMIMEHeaderKey(name)
	if len(r.canon) < maxCachedNames {
		r.canon[name] = k
	}
	return k
}

// validWireName reports whether name is a valid HTTP/2 field name: a token without
// upper-case letters.
func validWireName(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}
