package controllers

import (
	"context"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/braidmesh/braid/internal/smi"
)

// Compiled records that a generation of a split went into the proxy configuration at a
// config version.
type Compiled struct {
	Generation int64
	Version    uint64
}

// Programs tracks which generation of each TrafficSplit was compiled into which config
// version, and tells the TrafficSplit reconciler when to look again: when a split is
// compiled, and when proxies acknowledge versions while the split waits for them.
type Programs struct {
	mu       sync.Mutex
	compiled map[types.NamespacedName]Compiled
	waiting  map[types.NamespacedName]bool
	dirty    map[types.NamespacedName]bool
	wake     chan struct{}
	events   chan event.TypedGenericEvent[*smi.TrafficSplit]
}

// NewPrograms returns an empty tracker. Run Start to deliver its events.
func NewPrograms() *Programs {
	return &Programs{
		compiled: map[types.NamespacedName]Compiled{},
		waiting:  map[types.NamespacedName]bool{},
		dirty:    map[types.NamespacedName]bool{},
		wake:     make(chan struct{}, 1),
		events:   make(chan event.TypedGenericEvent[*smi.TrafficSplit]),
	}
}

// Record notes that generation gen of split runs from config version on.
func (p *Programs) Record(split types.NamespacedName, gen int64, version uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.compiled[split] == (Compiled{gen, version}) {
		return
	}
	p.compiled[split] = Compiled{gen, version}
	p.notify(split)
}

// Get returns what was last compiled for split.
func (p *Programs) Get(split types.NamespacedName) (Compiled, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.compiled[split]
	return c, ok
}

// Forget drops a split that no longer exists or no longer governs its root.
func (p *Programs) Forget(split types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.compiled, split)
	delete(p.waiting, split)
}

// AwaitAcks asks to look at split again when proxies acknowledge more.
func (p *Programs) AwaitAcks(split types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waiting[split] = true
}

// AcksChanged is called by the config server when proxies acknowledged, connected or left.
func (p *Programs) AcksChanged() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.waiting {
		p.notify(k)
	}
	clear(p.waiting)
}

// notify marks split for a reconcile; callers hold p.mu. Marks coalesce until delivered.
func (p *Programs) notify(split types.NamespacedName) {
	p.dirty[split] = true
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Events is the source of reconcile requests for the TrafficSplit controller.
func (p *Programs) Events() <-chan event.TypedGenericEvent[*smi.TrafficSplit] { return p.events }

// Start delivers marked splits as events until ctx ends.
func (p *Programs) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		}
		p.mu.Lock()
		batch := p.dirty
		p.dirty = map[types.NamespacedName]bool{}
		p.mu.Unlock()
		for k := range batch {
			ev := event.TypedGenericEvent[*smi.TrafficSplit]{Object: &smi.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}}
			select {
			case p.events <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}
