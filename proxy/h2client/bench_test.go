package h2client

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
)

// BenchmarkClient compares this Transport with net/http's (HTTP/2 only) against the same
// h2server: 1 KB answers, 16 goroutines, one connection. cpu-ns/op is the process's CPU
// time (user and system, server included) per request.
func BenchmarkClient(b *testing.B) {
	answer := bytes.Repeat([]byte("x"), 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(answer) })
	b.Run("h2client", func(b *testing.B) {
		ts := startH2(b, h)
		benchRequests(b, ts, ts.transport(b), len(answer))
	})
	b.Run("net-http", func(b *testing.B) {
		ts := startH2(b, h)
		tr := &http.Transport{Protocols: new(http.Protocols), DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			var d tls.Dialer
			d.Config = ts.clientTLS.Clone()
			return d.DialContext(ctx, "tcp", addr)
		}}
		tr.Protocols.SetHTTP2(true)
		b.Cleanup(tr.CloseIdleConnections)
		benchRequests(b, ts, tr, len(answer))
	})
}

func benchRequests(b *testing.B, ts *testServer, tr http.RoundTripper, size int) {
	url := ts.url("/")
	getOne := func() error {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close() //nolint:errcheck // read fully below
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && n != int64(size) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if err := getOne(); err != nil { // one connection, set up outside the timing
		b.Fatal(err)
	}
	var failed atomic.Value
	b.ReportAllocs()
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0))) // 16 goroutines
	cpu0 := cpuTime(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := getOne(); err != nil {
				failed.Store(err)
				return
			}
		}
	})
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if n := ts.accepted.Load(); n != 1 {
		b.Errorf("%d connections, want 1", n)
	}
}

// cpuTime is the process's user and system CPU time so far, in nanoseconds.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
