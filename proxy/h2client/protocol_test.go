package h2client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/braidmesh/braid/proxy/h2server"
)

func TestShutdownMidTrafficRetriesUnprocessedRequests(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	var current atomic.Pointer[h2server.Server]
	current.Store(&h2server.Server{Handler: h})
	ts := startH2Server(t, current.Load)
	tr := ts.transport(t)
	get(t, tr, ts.url("/")) //nolint:bodyclose // get closes it

	const workers, perWorker = 16, 60
	var wg sync.WaitGroup
	var failures atomic.Int32
	var sent atomic.Int32
	halfway := make(chan struct{})
	var once sync.Once
	for range workers {
		wg.Go(func() {
			for range perWorker {
				if sent.Add(1) == workers*perWorker/3 {
					once.Do(func() { close(halfway) })
				}
				if err := roundTripErr(t, tr, ts.url("/")); err != nil {
					failures.Add(1)
					t.Errorf("request failed during shutdown: %v", err)
				}
			}
		})
	}
	<-halfway
	old := current.Swap(&h2server.Server{Handler: h}) // new connections go to a fresh server
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := old.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	if ts.accepted.Load() < 2 {
		t.Errorf("accepted %d connections, want a new one after GOAWAY", ts.accepted.Load())
	}
}

func TestRefusedStreamIsRetried(t *testing.T) {
	var conns atomic.Int32
	rs := startRaw(t, nil, func(rc *rawConn) {
		first := conns.Add(1) == 1
		id := rc.awaitRequest()
		if id == 0 {
			return
		}
		if first {
			_ = rc.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			rc.flush()
			_ = rc.fr.WriteGoAway(id, http2.ErrCodeNo, nil) // this connection takes no more
			rc.flush()
			rc.awaitEnd()
			return
		}
		rc.headers(id, true, ":status", "204")
		rc.awaitEnd()
	})
	tr := newTransport(t, rs.clientTLS, nil)
	url := "https://" + rs.addr + "/"
	if err := roundTripErr(t, tr, url); err != nil {
		t.Fatalf("GET after REFUSED_STREAM: %v", err)
	}

	// A body that cannot be sent again is not retried, and the error says why.
	conns.Store(0)
	tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url, io.NopCloser(strings.NewReader("x")))
	_, err := tr.RoundTrip(req) //nolint:bodyclose // no response expected
	if !errors.Is(err, ErrNotProcessed) || !strings.Contains(err.Error(), "not processed") {
		t.Errorf("POST without GetBody: error %v, want one saying it was not processed", err)
	}
}

// TestMalformedServer checks that a misbehaving server gives errors, never a panic or a
// hang.
func TestMalformedServer(t *testing.T) {
	big := strings.Repeat("v", 70<<10)
	cases := map[string]func(rc *rawConn, id uint32){
		"no status": func(rc *rawConn, id uint32) { rc.headers(id, true, "x", "y") },
		"bad status": func(rc *rawConn, id uint32) {
			rc.headers(id, true, ":status", "abc")
		},
		"101": func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "101") },
		"headers too large": func(rc *rawConn, id uint32) {
			rc.headerBlock(id, ":status", "200", "x-big1", big[:30<<10], "x-big2", big[:30<<10], "x-big3", big[:30<<10])
		},
		"push promise": func(rc *rawConn, id uint32) {
			_ = rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: 2, BlockFragment: []byte{0x82}, EndHeaders: true})
			rc.flush()
		},
		"data before headers": func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteData(id, true, []byte("x"))
			rc.flush()
		},
		"trailers without end": func(rc *rawConn, id uint32) {
			rc.headers(id, false, ":status", "200")
			rc.headers(id, false, "x-trailer", "1")
		},
		"frame on unopened stream": func(rc *rawConn, id uint32) {
			rc.headers(id+2, true, ":status", "200")
		},
		"garbage": func(rc *rawConn, _ uint32) {
			_, _ = rc.bw.Write(bytes.Repeat([]byte{0xff}, 64))
			rc.flush()
		},
		"window update overflow": func(rc *rawConn, _ uint32) {
			_ = rc.fr.WriteWindowUpdate(0, maxWindow)
			_ = rc.fr.WriteWindowUpdate(0, maxWindow)
			rc.flush()
		},
		"bad content-length": func(rc *rawConn, id uint32) {
			rc.headers(id, true, ":status", "200", "content-length", "x")
		},
		"body longer than content-length": func(rc *rawConn, id uint32) {
			rc.headers(id, false, ":status", "200", "content-length", "2")
			_ = rc.fr.WriteData(id, true, []byte("abc"))
			rc.flush()
		},
		"body shorter than content-length": func(rc *rawConn, id uint32) {
			rc.headers(id, false, ":status", "200", "content-length", "5")
			_ = rc.fr.WriteData(id, true, []byte("abc"))
			rc.flush()
		},
		"close mid-body": func(rc *rawConn, id uint32) {
			rc.headers(id, false, ":status", "200")
			_ = rc.fr.WriteData(id, false, []byte("partial"))
			rc.flush()
			_ = rc.nc.Close()
		},
	}
	for name, script := range cases {
		t.Run(name, func(t *testing.T) {
			rs := startRaw(t, nil, func(rc *rawConn) {
				id := rc.awaitRequest()
				if id == 0 {
					return
				}
				script(rc, id)
				rc.awaitEnd()
			})
			tr := newTransport(t, rs.clientTLS, nil)
			err := roundTripErr(t, tr, "https://"+rs.addr+"/")
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v, want a protocol error", err)
			}
		})
	}
}

func TestDataBeyondTheStreamWindow(t *testing.T) {
	written := make(chan struct{})
	rs := startRaw(t, nil, func(rc *rawConn) {
		id := rc.awaitRequest()
		if id == 0 {
			return
		}
		rc.headers(id, false, ":status", "200")
		chunk := make([]byte, 16384)
		for range streamRecvWindow/len(chunk) + 1 {
			_ = rc.fr.WriteData(id, false, chunk)
		}
		_ = rc.fr.WritePing(false, [8]byte{}) // its ack follows the client's handling of the DATA
		rc.flush()
		var reset *http2.RSTStreamFrame
		for acked := false; !acked; {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				break
			}
			if rf, ok := f.(*http2.RSTStreamFrame); ok && reset == nil {
				reset = rf
			}
			pf, ok := f.(*http2.PingFrame)
			acked = ok && pf.IsAck()
		}
		close(written)
		if reset == nil || reset.ErrCode != http2.ErrCodeFlowControl {
			t.Errorf("server got %v, want RST_STREAM(FLOW_CONTROL_ERROR)", reset)
		}
	})
	tr := newTransport(t, rs.clientTLS, nil)
	resp, err := tr.RoundTrip(mustGet(t, "https://"+rs.addr+"/"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() //nolint:errcheck // test
	<-written               // nothing read yet: no credit was returned
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("body read without error past a flow-control violation")
	}
}

func TestServerSettingsAndPing(t *testing.T) {
	pinged := make(chan bool, 1)
	rs := startRaw(t, []http2.Setting{
		{ID: http2.SettingMaxFrameSize, Val: 16384},
		{ID: http2.SettingHeaderTableSize, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: 10},
	}, func(rc *rawConn) {
		id := rc.awaitRequest()
		if id == 0 {
			return
		}
		_ = rc.fr.WritePing(false, [8]byte{1, 2, 3})
		rc.flush()
		got, n := readBodyAndPing(rc, id)
		pinged <- got
		_ = rc.fr.WriteWindowUpdate(id, 1) // keep the window tiny: the body comes in pieces
		rc.headers(id, false, ":status", "200")
		_ = rc.fr.WriteData(id, true, []byte(strings.Repeat("x", n)))
		rc.flush()
		rc.awaitEnd()
	})
	tr := newTransport(t, rs.clientTLS, nil)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://"+rs.addr+"/", strings.NewReader(strings.Repeat("b", 25)))
	_, body := do(t, tr, req) //nolint:bodyclose // closed by the helper
	if !<-pinged {
		t.Error("PING not answered")
	}
	if len(body) != 25 {
		t.Errorf("server received %d body bytes through a 10-byte window, want 25", len(body))
	}
}

// readBodyAndPing reads the request body, granting 10 bytes of window at a time, and
// reports whether the PING was acknowledged.
func readBodyAndPing(rc *rawConn, id uint32) (pingAcked bool, n int) {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return pingAcked, n
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			pingAcked = pingAcked || f.IsAck() && f.Data == [8]byte{1, 2, 3}
		case *http2.DataFrame:
			if len(f.Data()) > 10 {
				return false, 0
			}
			n += len(f.Data())
			if f.StreamEnded() {
				return pingAcked, n
			}
			if len(f.Data()) > 0 {
				_ = rc.fr.WriteWindowUpdate(id, uint32(len(f.Data())))
				_ = rc.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
				rc.flush()
			}
		}
	}
}

// TestServerThatStopsReading checks that a write blocked on a server that no longer
// reads fails the connection after the write timeout instead of hanging.
func TestServerThatStopsReading(t *testing.T) {
	stop := make(chan struct{})
	rs := startRaw(t, []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: maxWindow}}, func(rc *rawConn) {
		_ = rc.fr.WriteWindowUpdate(0, maxWindow-65535)
		rc.flush()
		rc.awaitRequest()
		<-stop // reads nothing more
	})
	defer close(stop)
	tr := newTransport(t, rs.clientTLS, nil)
	tr.writeTimeoutOverride = 200 * time.Millisecond
	body := bytes.NewReader(make([]byte, 256<<20))
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://"+rs.addr+"/", body)
	done := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req) //nolint:bodyclose // no response expected
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("RoundTrip succeeded against a server that reads nothing")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RoundTrip hung on a server that stopped reading")
	}
}

// A server that goes silent with a request in flight (its node lost, a partition: no
// FIN, no RST) is found by a PING it does not answer, and the request fails instead of
// waiting for TCP to give up many minutes later.
func TestSilentServerFailsItsConnection(t *testing.T) {
	stop := make(chan struct{})
	rs := startRaw(t, nil, func(rc *rawConn) {
		rc.awaitRequest()
		<-stop // answers nothing more, not even PINGs
	})
	defer close(stop)
	tr := newTransport(t, rs.clientTLS, nil)
	tr.ReadIdleTimeout, tr.PingTimeout = 100*time.Millisecond, 100*time.Millisecond
	err := roundTripErr(t, tr, "https://"+rs.addr+"/")
	if err == nil || !strings.Contains(err.Error(), "PING") {
		t.Fatalf("request to a silent server: %v, want the connection failed for an unanswered PING", err)
	}
}

// A server that is slow to answer but alive answers the PINGs, and the request waits for
// its answer however long it takes.
func TestSlowServerKeepsItsConnection(t *testing.T) {
	pings := make(chan int, 1)
	rs := startRaw(t, nil, func(rc *rawConn) {
		id := rc.awaitRequest()
		n := 0
		deadline := time.Now().Add(time.Second) // ten read-idle periods
		for time.Now().Before(deadline) {
			_ = rc.nc.SetReadDeadline(deadline)
			f, err := rc.fr.ReadFrame()
			if err != nil {
				break
			}
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				n++
				_ = rc.fr.WritePing(true, p.Data)
				rc.flush()
			}
		}
		pings <- n
		_ = rc.nc.SetReadDeadline(time.Time{})
		rc.headers(id, true, ":status", "204")
		rc.awaitEnd()
	})
	tr := newTransport(t, rs.clientTLS, nil)
	tr.ReadIdleTimeout, tr.PingTimeout = 100*time.Millisecond, 100*time.Millisecond
	if err := roundTripErr(t, tr, "https://"+rs.addr+"/"); err != nil {
		t.Fatalf("request to a slow server: %v, want its answer", err)
	}
	if n := <-pings; n < 2 {
		t.Errorf("the server saw %d PINGs in a second of silence, want several", n)
	}
}
