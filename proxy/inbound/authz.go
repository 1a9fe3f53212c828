package inbound

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// Policy is a compiled inbound policy: who may call the workload, on which ports, for what.
type Policy struct {
	mode     string
	allowAll bool
	grants   []grant
	ports    map[uint32]api.Protocol
}

type grant struct {
	name       string
	sources    []string // sorted
	ports      []uint32 // empty: every port
	anyRequest bool
	matches    *router.Matcher
}

// NewPolicy compiles an inbound policy. A nil one admits nothing.
func NewPolicy(in *api.Inbound) (*Policy, error) {
	p := &Policy{mode: in.GetMode(), allowAll: in.GetAllowAll(), ports: in.GetPorts()}
	if p.mode == "" {
		p.mode = "None"
	}
	for _, a := range in.GetAuthorizations() {
		m, err := router.NewMatcher(a.GetHttpMatches())
		if err != nil {
			return nil, fmt.Errorf("authorization %s: %w", a.GetName(), err)
		}
		g := grant{name: a.GetName(), sources: slices.Sorted(slices.Values(a.GetSources())), ports: a.GetTcpPorts(), anyRequest: a.GetAnyRequest(), matches: m}
		p.grants = append(p.grants, g)
	}
	return p, nil
}

// Decision is the outcome of an authorization: the grant that admitted, or why not.
type Decision struct {
	Allowed bool
	// Grant names the TrafficTarget that admitted the request ("" with AllowAll).
	Grant string
	// Reason says, for a user, why the request was refused.
	Reason string
}

// Protocol returns the protocol the workload's port is declared with.
func (p *Policy) Protocol(port uint32) api.Protocol { return p.ports[port] }

// AuthorizeHTTP decides on one HTTP request from peer (a verified SPIFFE ID; "" for a
// plaintext client) to port.
func (p *Policy) AuthorizeHTTP(peer string, port uint32, r *http.Request) Decision {
	if d, done := p.precheck(peer); done {
		return d
	}
	for i := range p.grants {
		g := &p.grants[i]
		if !g.admitsPeer(peer, port) {
			continue
		}
		if g.anyRequest {
			return Decision{Allowed: true, Grant: g.name}
		}
		if _, ok := g.matches.Admits(r.Method, r.URL.Path, r.Header); ok {
			return Decision{Allowed: true, Grant: g.name}
		}
	}
	return Decision{Reason: fmt.Sprintf("no TrafficTarget allows %s to %s %s on port %d (access mode %s)", peer, r.Method, r.URL.Path, port, p.mode)}
}

// AuthorizeTCP decides on one opaque connection from peer to port: only L4 grants (a
// TCPRoute without HTTP rules) admit connections.
func (p *Policy) AuthorizeTCP(peer string, port uint32) Decision {
	if d, done := p.precheck(peer); done {
		return d
	}
	for i := range p.grants {
		if g := &p.grants[i]; g.anyRequest && g.admitsPeer(peer, port) {
			return Decision{Allowed: true, Grant: g.name}
		}
	}
	return Decision{Reason: fmt.Sprintf("no TrafficTarget allows %s TCP connections to port %d (access mode %s)", peer, port, p.mode)}
}

func (p *Policy) precheck(peer string) (Decision, bool) {
	switch {
	case p == nil:
		return Decision{Reason: "the proxy has no inbound policy yet"}, true
	case p.allowAll:
		return Decision{Allowed: true}, true
	case peer == "":
		return Decision{Reason: fmt.Sprintf("clients without a mesh identity are refused: the workload enforces TrafficTargets (access mode %s)", p.mode)}, true
	}
	return Decision{}, false
}

func (g *grant) admitsPeer(peer string, port uint32) bool {
	if _, ok := slices.BinarySearch(g.sources, peer); !ok {
		return false
	}
	return len(g.ports) == 0 || slices.Contains(g.ports, port)
}
