package controllers

import (
	"context"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/internal/smi"
)

// Compiled records that a generation of an object (a split, or an HTTPRoute for one of
// its parent Services) went into the proxy configuration at a config version.
type Compiled struct {
	Generation int64
	Version    uint64
}

// Programs tracks which generation of each object K names was compiled into which config
// version, and tells the object's reconciler when to look again: when it is compiled, and
// when proxies acknowledge versions while it waits for them. K is a TrafficSplit's key,
// or an HTTPRoute's key with one of its parent Services (see RouteParent).
type Programs[K comparable, T client.Object] struct {
	mu       sync.Mutex
	compiled map[K]Compiled
	waiting  map[K]bool
	dirty    map[K]bool
	wake     chan struct{}
	events   chan event.TypedGenericEvent[T]
	// object returns the object to reconcile for a key.
	object func(K) T
}

// SplitPrograms tracks TrafficSplits.
type SplitPrograms = Programs[types.NamespacedName, *smi.TrafficSplit]

// RouteParent names an HTTPRoute and one of its parent Services.
type RouteParent struct {
	Route, Parent types.NamespacedName
}

// RoutePrograms tracks HTTPRoutes, per parent Service.
type RoutePrograms = Programs[RouteParent, *gatewayv1.HTTPRoute]

// NewPrograms returns an empty tracker of TrafficSplits. Run Start to deliver its events.
func NewPrograms() *SplitPrograms {
	return newPrograms(func(k types.NamespacedName) *smi.TrafficSplit {
		return &smi.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}
	})
}

// NewRoutePrograms returns an empty tracker of HTTPRoutes. Run Start to deliver its events.
func NewRoutePrograms() *RoutePrograms {
	return newPrograms(func(k RouteParent) *gatewayv1.HTTPRoute {
		return &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: k.Route.Namespace, Name: k.Route.Name}}
	})
}

func newPrograms[K comparable, T client.Object](object func(K) T) *Programs[K, T] {
	return &Programs[K, T]{
		compiled: map[K]Compiled{},
		waiting:  map[K]bool{},
		dirty:    map[K]bool{},
		wake:     make(chan struct{}, 1),
		events:   make(chan event.TypedGenericEvent[T]),
		object:   object,
	}
}

// Record notes that generation gen of split (or route parent) runs from config version on.
func (p *Programs[K, T]) Record(split K, gen int64, version uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.compiled[split] == (Compiled{gen, version}) {
		return
	}
	p.compiled[split] = Compiled{gen, version}
	p.notify(split)
}

// Get returns what was last compiled for split.
func (p *Programs[K, T]) Get(split K) (Compiled, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.compiled[split]
	return c, ok
}

// Forget drops a split that no longer exists or no longer governs its root.
func (p *Programs[K, T]) Forget(split K) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.compiled, split)
	delete(p.waiting, split)
}

// AwaitAcks asks to look at split again when proxies acknowledge more.
func (p *Programs[K, T]) AwaitAcks(split K) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waiting[split] = true
}

// AcksChanged is called by the config server when proxies acknowledged, connected or left.
func (p *Programs[K, T]) AcksChanged() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.waiting {
		p.notify(k)
	}
	clear(p.waiting)
}

// notify marks split for a reconcile; callers hold p.mu. Marks coalesce until delivered.
func (p *Programs[K, T]) notify(split K) {
	p.dirty[split] = true
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Events is the source of reconcile requests for the tracked objects' controller.
func (p *Programs[K, T]) Events() <-chan event.TypedGenericEvent[T] { return p.events }

// Start delivers marked splits as events until ctx ends.
func (p *Programs[K, T]) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		}
		p.mu.Lock()
		batch := p.dirty
		p.dirty = map[K]bool{}
		p.mu.Unlock()
		for k := range batch {
			ev := event.TypedGenericEvent[T]{Object: p.object(k)}
			select {
			case p.events <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}
