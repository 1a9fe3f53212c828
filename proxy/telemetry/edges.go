package telemetry

import (
	"math"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/braidmesh/braid/proxy/router"
)

// Edges records, for the SMI TrafficMetrics API, the HTTP requests between this proxy's
// workload and each peer: per peer (its address and verified identity) and direction, the
// successes, the failures and a latency histogram, in time slots covering the last few
// minutes. Unlike the Prometheus metrics its keys come from traffic (peer addresses), so
// it holds at most MaxPeers edges and forgets the least recently used beyond that.
// A nil *Edges records nothing.
type Edges struct {
	clock    Clock
	slot     time.Duration
	slots    int
	maxPeers int

	mu    sync.RWMutex
	edges map[edgeKey]*edge
}

// Clock tells the time; k8s.io/utils/clock's clocks are Clocks.
type Clock interface{ Now() time.Time }

type systemTime struct{}

func (systemTime) Now() time.Time { return time.Now() }

// EdgesOptions configure NewEdges; zero fields take their defaults.
type EdgesOptions struct {
	Clock Clock // the system clock by default
	// Slot is the time resolution of the windows (10 s), Slots how many slots are kept
	// (30: five minutes at the default slot).
	Slot  time.Duration
	Slots int
	// MaxPeers bounds the edges held (256 by default).
	MaxPeers int
}

// Defaults of EdgesOptions.
const (
	DefaultEdgeSlot     = 10 * time.Second
	DefaultEdgeSlots    = 30
	DefaultEdgeMaxPeers = 256
)

// EdgeDirection says which side of a request the proxy measured.
type EdgeDirection uint8

// The directions.
const (
	// EdgeInbound: the peer called this workload; measured at the server side.
	EdgeInbound EdgeDirection = iota
	// EdgeOutbound: this workload called the peer; measured at the client side.
	EdgeOutbound
)

func (d EdgeDirection) String() string {
	if d == EdgeOutbound {
		return "outbound"
	}
	return "inbound"
}

// EdgeLatencyBoundsMs are the upper bounds of the edge latency histogram, in
// milliseconds: 0.1 ms times powers of √2 up to about 105 s, so a percentile read from
// them is within a factor √2 (linear interpolation inside a bucket does better).
var EdgeLatencyBoundsMs = func() []float64 {
	b := make([]float64, 41)
	for i := range b {
		b[i] = math.Round(0.1*math.Pow(2, float64(i)/2)*1e4) / 1e4
	}
	return b
}()

type edgeKey struct {
	dir      EdgeDirection
	addr     netip.Addr
	identity string
}

// edge is one peer's ring of slots.
type edge struct {
	mu   sync.Mutex
	last int64 // the slot number of the latest request, for eviction
	ring []edgeSlot
}

// edgeSlot counts the requests of one slot, numbered since the Unix epoch.
type edgeSlot struct {
	number           int64
	success, failure uint64
	latency          []uint64 // len(EdgeLatencyBoundsMs)+1: the last counts what exceeds every bound
}

// NewEdges returns an empty recorder.
func NewEdges(o EdgesOptions) *Edges {
	if o.Clock == nil {
		o.Clock = systemTime{}
	}
	if o.Slot <= 0 {
		o.Slot = DefaultEdgeSlot
	}
	if o.Slots <= 0 {
		o.Slots = DefaultEdgeSlots
	}
	if o.MaxPeers <= 0 {
		o.MaxPeers = DefaultEdgeMaxPeers
	}
	return &Edges{clock: o.Clock, slot: o.Slot, slots: o.Slots, maxPeers: o.MaxPeers, edges: map[edgeKey]*edge{}}
}

// MaxWindow is the longest window the recorder answers for.
func (e *Edges) MaxWindow() time.Duration { return time.Duration(e.slots) * e.slot }

// Inbound records a request a peer sent: remoteAddr is its connection's remote address
// (host:port), identity its verified SPIFFE ID ("" for a plaintext client), status the
// answer's status (0: none, a failure) and elapsed the time it took.
func (e *Edges) Inbound(remoteAddr, identity string, status int, elapsed time.Duration) {
	if e == nil {
		return
	}
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return
	}
	e.Record(EdgeInbound, ap.Addr(), identity, status == 0 || status >= 500, elapsed)
}

// Outbound records a request this workload sent to ep, which answered with status
// (a proxy-made 502 for a connection it could not make); broken says the answer broke off.
// Requests that reached no endpoint are not edges and are not recorded.
func (e *Edges) Outbound(ep router.Endpoint, status int, broken bool, elapsed time.Duration) {
	if e == nil || !ep.Addr.IsValid() {
		return
	}
	e.Record(EdgeOutbound, ep.Addr.Addr(), ep.Identity, broken || status == 0 || status >= 500, elapsed)
}

// Record counts one request with peer in direction dir.
func (e *Edges) Record(dir EdgeDirection, peer netip.Addr, identity string, failed bool, elapsed time.Duration) {
	if e == nil {
		return
	}
	key := edgeKey{dir: dir, addr: peer.Unmap(), identity: identity}
	now := e.slotOf(e.clock.Now())
	ed := e.edge(key, now)
	ed.mu.Lock()
	defer ed.mu.Unlock()
	s := &ed.ring[int(now%int64(e.slots))]
	if s.number != now || s.latency == nil {
		*s = edgeSlot{number: now, latency: reuse(s.latency)}
	}
	if failed {
		s.failure++
	} else {
		s.success++
	}
	s.latency[latencyBucket(elapsed)]++
	ed.last = now
}

func reuse(b []uint64) []uint64 {
	if b == nil {
		return make([]uint64, len(EdgeLatencyBoundsMs)+1)
	}
	clear(b)
	return b
}

func latencyBucket(d time.Duration) int {
	ms := float64(d) / float64(time.Millisecond)
	return sort.SearchFloat64s(EdgeLatencyBoundsMs, ms) // the first bound ≥ ms; len: above all
}

func (e *Edges) slotOf(t time.Time) int64 { return t.UnixNano() / int64(e.slot) }

// edge returns the edge of key, adding it (and evicting the least recently used edge
// when full) if it is new.
func (e *Edges) edge(key edgeKey, now int64) *edge {
	e.mu.RLock()
	ed := e.edges[key]
	e.mu.RUnlock()
	if ed != nil {
		return ed
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if ed = e.edges[key]; ed != nil {
		return ed
	}
	if len(e.edges) >= e.maxPeers {
		e.evictOldest()
	}
	ed = &edge{last: now, ring: make([]edgeSlot, e.slots)}
	e.edges[key] = ed
	return ed
}

// evictOldest forgets the edge whose latest request is the oldest; e.mu is held.
func (e *Edges) evictOldest() {
	var oldest edgeKey
	first, at := true, int64(0)
	for k, ed := range e.edges {
		ed.mu.Lock()
		last := ed.last
		ed.mu.Unlock()
		if first || last < at {
			oldest, at, first = k, last, false
		}
	}
	delete(e.edges, oldest)
}

// EdgeSnapshot is what /stats/edges serves: the edges with traffic in the window.
type EdgeSnapshot struct {
	// Window is the window asked for; the counts cover the slots it spans, the current
	// one included (SlotSeconds each), so they may reach up to one slot less far back.
	Window      string  `json:"window"`
	SlotSeconds float64 `json:"slotSeconds"`
	// Timestamp is the end of the window (now).
	Timestamp time.Time `json:"timestamp"`
	// LatencyBoundsMs are the histogram bounds every edge's LatencyCounts use.
	LatencyBoundsMs []float64   `json:"latencyBoundsMs"`
	Edges           []EdgeStats `json:"edges"`
}

// EdgeStats are the requests between the workload and one peer in the window.
type EdgeStats struct {
	// Direction is inbound (the peer called; measured by this server) or outbound (this
	// workload called the peer; measured by this client).
	Direction    string `json:"direction"`
	PeerAddr     string `json:"peerAddr"`
	PeerIdentity string `json:"peerIdentity,omitempty"`
	Success      uint64 `json:"success"`
	Failure      uint64 `json:"failure"`
	// LatencyCounts counts requests by LatencyBoundsMs; the last entry counts those above
	// the last bound.
	LatencyCounts []uint64 `json:"latencyCounts"`
}

// Snapshot sums each edge over the slots window spans (1 to MaxWindow), and forgets
// edges whose latest request is older than every slot kept.
func (e *Edges) Snapshot(window time.Duration) EdgeSnapshot {
	now := e.clock.Now()
	cur := e.slotOf(now)
	n := int64(min(max((window+e.slot-1)/e.slot, 1), time.Duration(e.slots)))
	snap := EdgeSnapshot{Window: window.String(), SlotSeconds: e.slot.Seconds(), Timestamp: now.UTC(), LatencyBoundsMs: EdgeLatencyBoundsMs, Edges: []EdgeStats{}}
	e.mu.Lock()
	defer e.mu.Unlock()
	for key, ed := range e.edges {
		st, live := ed.sum(cur-n+1, cur, int64(e.slots))
		if !live {
			delete(e.edges, key)
			continue
		}
		if st.Success+st.Failure == 0 {
			continue
		}
		st.Direction, st.PeerAddr, st.PeerIdentity = key.dir.String(), key.addr.String(), key.identity
		snap.Edges = append(snap.Edges, st)
	}
	sort.Slice(snap.Edges, func(i, j int) bool {
		a, b := snap.Edges[i], snap.Edges[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.PeerAddr != b.PeerAddr {
			return a.PeerAddr < b.PeerAddr
		}
		return a.PeerIdentity < b.PeerIdentity
	})
	return snap
}

// sum adds the slots numbered from..to; live is false when the edge's latest request is
// older than the ring holds.
func (ed *edge) sum(from, to, kept int64) (st EdgeStats, live bool) {
	ed.mu.Lock()
	defer ed.mu.Unlock()
	if ed.last <= to-kept {
		return st, false
	}
	st.LatencyCounts = make([]uint64, len(EdgeLatencyBoundsMs)+1)
	for i := range ed.ring {
		s := &ed.ring[i]
		if s.latency == nil || s.number < from || s.number > to {
			continue
		}
		st.Success += s.success
		st.Failure += s.failure
		for b, c := range s.latency {
			st.LatencyCounts[b] += c
		}
	}
	return st, true
}

// Edges returns the recorder of the requests between the workload and its peers.
func (m *Metrics) Edges() *Edges {
	if m == nil {
		return nil
	}
	return m.edges
}
