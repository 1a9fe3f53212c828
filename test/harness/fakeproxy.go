package harness

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/braidmesh/braid/proxy/api"
)

// StreamClient is a simulated proxy: a real gRPC config stream whose acknowledgements the
// caller controls.
type StreamClient struct {
	conn   *grpc.ClientConn
	stream api.ConfigService_StreamClient
	cancel context.CancelFunc
}

// DialConfig opens a config stream to addr and says Hello as proxy id in namespace.
func DialConfig(ctx context.Context, addr, id, namespace string) (*StreamClient, error) {
	return DialConfigAs(ctx, addr, id, namespace, "")
}

// DialConfigAs is DialConfig for a proxy of a workload running as serviceAccount.
func DialConfigAs(ctx context.Context, addr, id, namespace, serviceAccount string) (*StreamClient, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dialing the config server: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := api.NewConfigServiceClient(conn).Stream(ctx, grpc.WaitForReady(true)) // like a proxy, wait for the server
	if err == nil {
		err = stream.Send(&api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: &api.Hello{ProxyId: id, Namespace: namespace, ServiceAccount: serviceAccount}}})
	}
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, fmt.Errorf("opening a config stream: %w", err)
	}
	return &StreamClient{conn: conn, stream: stream, cancel: cancel}, nil
}

// Recv waits for the next snapshot.
func (c *StreamClient) Recv() (*api.Snapshot, error) { return c.stream.Recv() }

// Ack acknowledges version (a NACK when reason is not empty).
func (c *StreamClient) Ack(version uint64, reason string) error {
	return c.stream.Send(&api.StreamRequest{Kind: &api.StreamRequest_Ack{Ack: &api.Ack{Version: version, Error: reason}}})
}

// Close ends the stream.
func (c *StreamClient) Close() error {
	c.cancel()
	return c.conn.Close()
}

// AckingProxy is a simulated proxy that reads every snapshot and acknowledges it while
// acking is on (the start); turning acking back on acknowledges the latest version at once.
type AckingProxy struct {
	*StreamClient
	mu     sync.Mutex
	acking bool
	latest uint64
	// rejected are the Services (namespace/name → why) each Ack says the proxy could
	// not build.
	rejected map[string]string
}

// StartAckingProxy opens a config stream as proxy id in namespace and starts acknowledging.
func StartAckingProxy(ctx context.Context, addr, id, namespace string) (*AckingProxy, error) {
	c, err := DialConfig(ctx, addr, id, namespace)
	if err != nil {
		return nil, err
	}
	p := &AckingProxy{StreamClient: c, acking: true}
	go func() {
		for {
			snap, err := c.Recv()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.latest = snap.GetVersion()
			if p.acking {
				_ = p.ackLatest()
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// SetAcking turns acknowledgements off or on.
func (p *AckingProxy) SetAcking(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.acking = on
	if on && p.latest > 0 {
		_ = p.ackLatest()
	}
}

// RejectServices makes the proxy's Acks say it could not build these Services
// (namespace/name → why), from now on; it acknowledges the latest version again at once.
func (p *AckingProxy) RejectServices(rejected map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rejected = rejected
	if p.acking && p.latest > 0 {
		_ = p.ackLatest()
	}
}

// ackLatest acknowledges the latest version; callers hold p.mu.
func (p *AckingProxy) ackLatest() error {
	return p.stream.Send(&api.StreamRequest{Kind: &api.StreamRequest_Ack{Ack: &api.Ack{Version: p.latest, RejectedServices: p.rejected}}})
}
