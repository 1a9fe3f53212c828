package outbound_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
)

// stubTransport answers every forwarded request itself, so the fuzzer exercises the
// handler's routing without sockets.
type stubTransport struct{}

func (stubTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader("ok")), Header: http.Header{}, Request: r}, nil
}

// FuzzRequestPath feeds raw HTTP/1.1 requests to the outbound handler, as the server would
// after parsing them: whatever the request, the handler answers with a valid status and
// never panics; requests the server cannot parse never reach it (net/http answers 400).
func FuzzRequestPath(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: web.shop:80\r\nUser-Agent: Firefox\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.shop.svc.cluster.local.\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: \r\n\r\n",
		"GET http://web.shop/ HTTP/1.1\r\nHost: other\r\n\r\n",
		"CONNECT web.shop:80 HTTP/1.1\r\nHost: web.shop:80\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.shop\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: web.shop\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.shop:99999\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	var table atomic.Pointer[router.Table]
	table.Store(build(f, webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.1", Port: 8080}}})))
	h := outbound.New(logr.Discard(), &table, nil)
	outbound.SetTransport(h, stubTransport{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // the server answers 400 before any handler runs
		}
		if req.Header.Get("Transfer-Encoding") != "" && req.Header.Get("Content-Length") != "" {
			t.Fatalf("ReadRequest accepted ambiguous framing: %q", raw)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 100 || rec.Code > 599 {
			t.Fatalf("status %d for %q", rec.Code, raw)
		}
		if rec.Code >= 400 && rec.Code != http.StatusBadGateway && rec.Header().Get("Braid-Proxy-Error") == "" {
			t.Fatalf("the proxy's own error %d is unmarked for %q", rec.Code, raw)
		}
	})
}
