package h2hdr

import (
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

var (
	errPseudoAfterRegular = errors.New("pseudo-header field after a regular one")
	errMixedPseudo        = errors.New("mix of request and response pseudo-header fields")
)

// Pseudo is a set of pseudo-header fields (RFC 9113 section 8.3).
type Pseudo uint8

// The pseudo-header fields a Decoder knows; any other one makes a block malformed.
const (
	Status    Pseudo = 1 << iota // :status
	Method                       // :method
	Scheme                       // :scheme
	Authority                    // :authority
	Path                         // :path
	Protocol                     // :protocol (RFC 8441)

	// Request is the pseudo-header fields of a request: none of them may come with
	// :status.
	Request = Method | Scheme | Authority | Path | Protocol
)

// Block is one decoded header block.
type Block struct {
	StreamID  uint32
	Ended     bool        // END_STREAM
	Truncated bool        // the header list went beyond the limit: fields are missing
	Header    http.Header // the regular fields kept
	Pseudo    Pseudo      // the pseudo-header fields present
	// The values of the pseudo-header fields present; :protocol's is not kept.
	Status, Method, Scheme, Authority, Path string
}

// addPseudo notes a pseudo-header field; an unknown or repeated one makes the block
// malformed, which is reported once the block is decoded.
func (d *Decoder) addPseudo(hf hpack.HeaderField) {
	var p Pseudo
	switch hf.Name {
	case ":status":
		p, d.blk.Status = Status, hf.Value
	case ":method":
		p, d.blk.Method = Method, hf.Value
	case ":scheme":
		p, d.blk.Scheme = Scheme, hf.Value
	case ":authority":
		p, d.blk.Authority = Authority, hf.Value
	case ":path":
		p, d.blk.Path = Path, hf.Value
	case ":protocol":
		p = Protocol
	default:
		d.setPseudoErr(fmt.Errorf("unknown pseudo-header field %q", hf.Name))
		return
	}
	if d.blk.Pseudo&p != 0 {
		d.setPseudoErr(fmt.Errorf("duplicate pseudo-header field %q", hf.Name))
	}
	d.blk.Pseudo |= p
}

func (d *Decoder) setPseudoErr(err error) {
	if d.pseudoErr == nil {
		d.pseudoErr = err
	}
}

// validName reports whether name is a valid HTTP/2 field name: a token without
// upper-case letters.
func validName(name string) bool {
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
