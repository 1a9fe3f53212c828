package h2server

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// BenchmarkServer compares this server with net/http's HTTP/2 server: the same handler
// writing 1 KB, the same TLS, loopback, 16 concurrent clients on one connection. cpu-ns/op
// is the process's CPU time (user and system, client included) per request.
func BenchmarkServer(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) })
	b.Run("h2server", func(b *testing.B) {
		h := startServer(b, &Server{Handler: handler}, nil)
		benchRequests(b, h.url, h.clientTLS, len(body))
	})
	b.Run("net-http", func(b *testing.B) {
		serverTLS, clientTLS := h2test.TLSConfigs(b)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		hs := &http.Server{Handler: handler, TLSConfig: serverTLS, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hs.ServeTLS(ln, "", "") }()
		b.Cleanup(func() { _ = hs.Close() })
		benchRequests(b, "https://"+ln.Addr().String(), clientTLS, len(body))
	})
}

// benchRequests runs b.N GETs from 16 goroutines over one HTTP/2 connection.
func benchRequests(b *testing.B, url string, clientTLS *tls.Config, size int) {
	tr := &http.Transport{TLSClientConfig: clientTLS.Clone(), Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP2(true)
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	get := func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close() //nolint:errcheck // read whole below
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && n != int64(size) {
			b.Errorf("response of %d bytes, want %d", n, size)
		}
		return err
	}
	if err := get(); err != nil { // connect before timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := get(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime returns the process's user and system CPU time in nanoseconds.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
