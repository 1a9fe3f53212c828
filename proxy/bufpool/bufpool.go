// Package bufpool lends the proxy's copy buffers, so that copying a response body
// (proxy/forward) allocates no fresh 32 KB buffer each time.
package bufpool

import "sync"

// Size is the size of the buffers: httputil.ReverseProxy's default too.
const Size = 32 << 10

// Pool is an httputil.BufferPool. It pools array pointers, so that neither Get nor Put
// allocates.
type Pool struct{ pool sync.Pool }

// Get returns a buffer of Size bytes.
func (p *Pool) Get() []byte {
	if buf, ok := p.pool.Get().(*[Size]byte); ok {
		return buf[:]
	}
	return make([]byte, Size)
}

// Put returns a buffer from Get.
func (p *Pool) Put(buf []byte) {
	if len(buf) == Size {
		p.pool.Put((*[Size]byte)(buf))
	}
}
