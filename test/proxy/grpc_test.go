package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// watchServer is a health service whose Watch streams SERVING every 10 ms until its
// context ends, and reports what it saw of that context.
type watchServer struct {
	healthpb.UnimplementedHealthServer
	// deadlines gets each stream's deadline as the server sees it (zero: none), when it
	// starts; ended gets the stream's context error once the context is done.
	deadlines chan time.Time
	ended     chan error
}

func (s *watchServer) Watch(_ *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	ctx := stream.Context()
	deadline, _ := ctx.Deadline()
	s.deadlines <- deadline
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			s.ended <- ctx.Err()
			return ctx.Err()
		case <-tick.C:
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
				s.ended <- ctx.Err()
				return err
			}
		}
	}
}

// A client that cancels a server-streaming RPC midway through the pair (client proxy,
// HTTP/2 over mTLS, server proxy, h2c) ends the server handler's context: the
// cancellation crosses both proxies as stream resets. A deadline the client sets reaches
// the server handler (grpc-timeout is carried), and ends the stream there when it
// passes.
func TestProxyPairCarriesGRPCCancellationAndDeadlines(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ws := &watchServer{deadlines: make(chan time.Time, 4), ended: make(chan error, 4)}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, ws)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	mp := newMeshPair(t, "ratings", lis.Addr().(*net.TCPAddr).Port, "PROTOCOL_HTTP2")
	conn, err := grpc.NewClient(mp.client.OutboundAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("ratings"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	client := healthpb.NewHealthClient(conn)
	checkGRPCCancellation(t, client, ws)
	checkGRPCDeadline(t, client, ws)
}

// checkGRPCCancellation cancels a stream with a long deadline midway: the deadline must
// have reached the server, and the cancellation must end the server handler's context.
func checkGRPCCancellation(t *testing.T, client healthpb.HealthClient, ws *watchServer) {
	t.Helper()
	const long = time.Minute
	ctx, cancel := context.WithTimeout(t.Context(), long)
	defer cancel()
	clientDeadline, _ := ctx.Deadline()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: "ratings"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	serverDeadline := <-ws.deadlines
	// The server's deadline is the client's, less the time the headers took to arrive
	// (grpc-timeout is relative); a proxy that dropped it would leave none.
	if serverDeadline.IsZero() || serverDeadline.Before(clientDeadline.Add(-10*time.Second)) || serverDeadline.After(clientDeadline.Add(time.Second)) {
		t.Errorf("the server saw deadline %v, want about the client's %v", serverDeadline, clientDeadline)
	}
	cancel()
	select {
	case err := <-ws.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the server's context ended with %v, want context.Canceled", err)
		}
	case <-time.After(eventually):
		t.Fatalf("the server handler still runs %s after the client cancelled", eventually)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel: %v, want Canceled", err)
	}
}

// checkGRPCDeadline opens a stream with a short deadline: the server handler's context
// ends by it, without any cancel from the client.
func checkGRPCDeadline(t *testing.T, client healthpb.HealthClient, ws *watchServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: "ratings"})
	if err != nil {
		t.Fatal(err)
	}
	if d := <-ws.deadlines; d.IsZero() {
		t.Error("the server saw no deadline for a call with a 300ms timeout")
	}
	select {
	case err := <-ws.ended:
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			t.Errorf("the server's context ended with %v, want the deadline", err)
		}
	case <-time.After(eventually):
		t.Fatalf("the server handler still runs %s after the client's deadline", eventually)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("the stream ended with %v, want DeadlineExceeded", err)
			}
			return
		}
	}
}
