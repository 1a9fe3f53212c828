// Package bufpool lends the proxy's copy buffers: httputil.ReverseProxy would otherwise
// allocate a fresh 32 KB buffer for every response it copies.
package bufpool

import "sync"

// Size is the size of the buffers: the reverse proxy's own default.
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
