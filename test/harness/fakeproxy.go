package harness

import (
	"context"
	"fmt"

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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dialing the config server: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := api.NewConfigServiceClient(conn).Stream(ctx, grpc.WaitForReady(true)) // like a proxy, wait for the server
	if err == nil {
		err = stream.Send(&api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: &api.Hello{ProxyId: id, Namespace: namespace}}})
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
