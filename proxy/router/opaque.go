package router

// OpaqueRoute returns the route that carries the port's opaque TCP connections: the first
// route without matches, since a connection has no method, path or headers to match. It
// returns nil when every route has matches (HTTP-only routing).
func (p *Port) OpaqueRoute() *Route {
	for _, r := range p.routes {
		if len(r.matches) == 0 {
			return r
		}
	}
	return nil
}
