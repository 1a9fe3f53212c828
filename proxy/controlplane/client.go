// Package controlplane connects the proxy to the operator's config server: it says Hello,
// applies every Snapshot it receives, and acknowledges each one. When the control plane is
// away the proxy keeps the configuration it has and reconnects with backoff.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/braidmesh/braid/proxy/api"
)

// ApplyFunc applies a full snapshot (deltas are merged before it is called), or says why
// it cannot (the proxy then keeps its last good configuration and NACKs the version). A
// *PartialError says it applied the snapshot except some Services.
type ApplyFunc func(*api.Snapshot) error

// PartialError reports a snapshot applied except the Services it names (namespace/name →
// why), which keep the configuration they had. The Ack says so, and is no NACK.
type PartialError struct {
	Rejected map[string]string
}

func (e *PartialError) Error() string {
	keys := slices.Sorted(maps.Keys(e.Rejected))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+": "+e.Rejected[k])
	}
	return "applied except Services " + strings.Join(parts, "; ")
}

// Client keeps a config stream open to the control plane.
type Client struct {
	Address string
	Hello   *api.Hello
	Apply   ApplyFunc
	Log     logr.Logger
	// TLS, when set, dials the control plane over mTLS (tlsid.Store.ControlPlaneConfig);
	// otherwise in plaintext.
	TLS *tls.Config
	// MinBackoff and MaxBackoff bound the wait between reconnection attempts.
	MinBackoff, MaxBackoff time.Duration
	// CertificateRoot, when set, gives the fingerprint of the root the proxy's
	// certificate chains to, reported in every Ack.
	CertificateRoot func() string
	// RootChanged, when set, says that CertificateRoot changed: the Ack of the version
	// the proxy runs is sent again, so the operator learns the new root.
	RootChanged <-chan struct{}
}

// Run streams configuration until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if c.TLS != nil {
		creds = credentials.NewTLS(c.TLS)
	}
	conn, err := grpc.NewClient(c.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// The connection's own reconnect backoff follows ours: gRPC's default grows to
		// two minutes, and after an operator restart proxies sat it out, tens of seconds
		// behind a control plane that was already back.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: max(c.MinBackoff, 10*time.Millisecond), Multiplier: 1.6, Jitter: 0.2, MaxDelay: max(c.MaxBackoff, c.MinBackoff, 10*time.Millisecond)},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return fmt.Errorf("connecting to the control plane at %s: %w", c.Address, err)
	}
	defer func() { _ = conn.Close() }()
	client := api.NewConfigServiceClient(conn)
	wait := c.MinBackoff
	for {
		received, err := c.stream(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if received {
			wait = c.MinBackoff
		}
		jittered := wait/2 + rand.N(wait/2+1) // so proxies do not reconnect in lockstep
		c.Log.Info("Control plane stream ended; keeping the current configuration", "error", err.Error(), "retryIn", jittered.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(jittered):
		}
		wait = min(2*wait, c.MaxBackoff)
	}
}

// stream runs one stream; received says whether any snapshot arrived on it.
func (c *Client) stream(ctx context.Context, client api.ConfigServiceClient) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.Stream(ctx)
	if err != nil {
		return false, fmt.Errorf("opening the config stream: %w", err)
	}
	if err := s.Send(&api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: c.Hello}}); err != nil {
		return false, fmt.Errorf("sending hello: %w", err)
	}
	acks := &acker{stream: s, root: c.CertificateRoot}
	if c.RootChanged != nil {
		go acks.resendOnChange(ctx, c.RootChanged)
	}
	var seen view
	for {
		msg, err := s.Recv()
		if err != nil {
			return received, fmt.Errorf("receiving configuration: %w", err)
		}
		received = true
		snap, err := seen.apply(msg)
		if err != nil {
			snap = msg // for its version
		} else {
			err = c.Apply(snap)
		}
		ack := &api.Ack{Version: snap.GetVersion()}
		var partial *PartialError
		switch {
		case errors.As(err, &partial):
			ack.RejectedServices = partial.Rejected
			c.Log.Info("Applied configuration except some Services; they keep their last good configuration", "version", snap.GetVersion(), "error", err.Error())
		case err != nil:
			ack.Error = err.Error()
			c.Log.Info("Rejected configuration; keeping the last good one", "version", snap.GetVersion(), "error", err.Error())
		default:
			c.Log.V(1).Info("Applied configuration", "version", snap.GetVersion(), "services", len(snap.GetServices()))
		}
		if err := acks.send(ack); err != nil {
			return received, fmt.Errorf("acknowledging version %d: %w", snap.GetVersion(), err)
		}
	}
}

// acker sends the Acks of one stream: each in answer to a Snapshot, and the last one
// again when the certificate's root changes.
type acker struct {
	stream api.ConfigService_StreamClient
	root   func() string

	mu   sync.Mutex // one Send at a time; guards last
	last *api.Ack
}

func (a *acker) send(ack *api.Ack) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.root != nil {
		ack.CertificateRoot = a.root()
	}
	a.last = ack
	return a.stream.Send(&api.StreamRequest{Kind: &api.StreamRequest_Ack{Ack: ack}})
}

// resendOnChange sends the last Ack again, with the current root, whenever changed
// fires, until ctx ends. Before the first Ack there is nothing to resend: the first
// one carries the root.
func (a *acker) resendOnChange(ctx context.Context, changed <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		a.mu.Lock()
		last := a.last
		a.mu.Unlock()
		if last == nil {
			continue
		}
		again := &api.Ack{Version: last.GetVersion(), Error: last.GetError(), RejectedServices: last.GetRejectedServices()}
		if err := a.send(again); err != nil {
			return // the stream is broken: Recv fails too, and the next stream reports the root
		}
	}
}
