package h2client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// TestReverseProxy puts the Transport under httputil.ReverseProxy, as the proxy does:
// an informational response is forwarded and a gRPC-like response keeps its trailers.
func TestReverseProxy(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/early" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = w.Write([]byte("\x00\x00\x00\x00\x02hi"))
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", "fine")
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		target, _ := url.Parse(ts.url(""))
		rp := httputil.NewSingleHostReverseProxy(target)
		rp.Transport = ts.transport(t)
		front := httptest.NewUnstartedServer(rp)
		front.EnableHTTP2 = true
		front.StartTLS()
		t.Cleanup(front.Close)
		client := front.Client()

		var early []int
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, front.URL+"/early", bytes.NewReader([]byte("\x00\x00\x00\x00\x00")))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		req = req.WithContext(withGot1xx(req.Context(), &early))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close() //nolint:errcheck // test
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != "\x00\x00\x00\x00\x02hi" {
			t.Errorf("body %q, %v", body, err)
		}
		if len(early) != 1 || early[0] != http.StatusEarlyHints {
			t.Errorf("informational responses through the proxy: %v, want [103]", early)
		}
		if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "fine" {
			t.Errorf("trailers through the proxy: %v", resp.Trailer)
		}
	})
}

// TestGRPCUnary sends a hand-built unary gRPC request to grpc-go's server (its
// http.Handler) and reads grpc-status from the trailers.
func TestGRPCUnary(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	servers(t, gs, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		msg, err := proto.Marshal(&healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		frame := append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/grpc.health.v1.Health/Check"), bytes.NewReader(frame))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		resp, body := do(t, tr, req) //nolint:bodyclose // closed by the helper
		if resp.StatusCode != http.StatusOK || resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("status %d, trailers %v", resp.StatusCode, resp.Trailer)
		}
		var out healthpb.HealthCheckResponse
		if len(body) < 5 || proto.Unmarshal([]byte(body[5:]), &out) != nil || out.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("response %q", body)
		}
	})
}

// withGot1xx records the informational responses a request receives.
func withGot1xx(ctx context.Context, codes *[]int) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			*codes = append(*codes, code)
			return nil
		},
	})
}
