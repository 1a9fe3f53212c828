package h2test

import (
	"bytes"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Frames returns the bytes write writes with a Framer: a fuzz seed of frames. block
// encodes name/value pairs into a header block fragment, with one HPACK encoder for
// all of them, as a peer's connection would.
func Frames(write func(fr *http2.Framer, block func(pairs ...string) []byte)) []byte {
	var buf, hbuf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	enc := hpack.NewEncoder(&hbuf)
	block := func(pairs ...string) []byte {
		hbuf.Reset()
		for i := 0; i+1 < len(pairs); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
		}
		return bytes.Clone(hbuf.Bytes())
	}
	write(fr, block)
	return buf.Bytes()
}
