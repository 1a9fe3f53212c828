package h1client

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// netHTTPHead is what net/http's Request.Write writes for req.
func netHTTPHead(t testing.TB, req *http.Request) string {
	t.Helper()
	var b bytes.Buffer
	if err := req.Write(&b); err != nil {
		t.Fatalf("net/http cannot write the request: %v", err)
	}
	return b.String()
}

func ourHead(req *http.Request) (string, error) {
	var h head
	if err := h.prepare(req); err != nil {
		return "", err
	}
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	err := h.write(w)
	_ = w.Flush()
	return b.String(), err
}

func newRequest(t testing.TB, method, target string, h http.Header) *http.Request {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if h == nil {
		h = http.Header{}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // as forward sends it: no agent of the proxy's own
	}
	return &http.Request{Method: method, URL: u, Host: u.Host, Header: h, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
}

// TestHeadIsWhatNetHTTPWrites compares the head written here with net/http's, byte for
// byte, for requests without a body.
func TestHeadIsWhatNetHTTPWrites(t *testing.T) {
	cases := map[string]*http.Request{
		"get":          newRequest(t, http.MethodGet, "http://app:8080/", nil),
		"empty method": newRequest(t, "", "http://app/x", nil),
		"empty path":   newRequest(t, http.MethodGet, "http://app", nil),
		"query":        newRequest(t, http.MethodGet, "http://app/search?q=a+b&x=%2F", nil),
		"force query":  newRequest(t, http.MethodGet, "http://app/p?", nil),
		"escaped path": newRequest(t, http.MethodGet, "http://app/a%2Fb/c%20d", nil),
		"spaces":       newRequest(t, http.MethodGet, "http://app/a b", nil),
		"post":         newRequest(t, http.MethodPost, "http://app/", nil),
		"put":          newRequest(t, http.MethodPut, "http://app/", nil),
		"patch":        newRequest(t, http.MethodPatch, "http://app/", nil),
		"delete":       newRequest(t, http.MethodDelete, "http://app/", nil),
		"head":         newRequest(t, http.MethodHead, "http://app/", nil),
		"extension":    newRequest(t, "PURGE", "http://app/", nil),
		"fields": newRequest(t, http.MethodGet, "http://app/", http.Header{
			"Accept":       {"text/html", "application/json"},
			"X-Empty":      {""},
			"X-Padded":     {"  v \t"},
			"Traceparent":  {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			"User-Agent":   {"curl/8.5.0"},
			"Content-Type": {"text/plain"},
			"Cookie":       {"a=1", "b=2"},
			"X-Obs-Text":   {"caf\xc3\xa9"},
		}),
		"excluded": newRequest(t, http.MethodGet, "http://app/", http.Header{
			"Content-Length":    {"10"},
			"Transfer-Encoding": {"chunked"},
			"Trailer":           {"X-T"},
			"Host":              {"other"},
		}),
		"ipv6 zone":         newRequest(t, http.MethodGet, "http://[fe80::1%25eth0]:80/", nil),
		"ipv6":              newRequest(t, http.MethodGet, "http://[::1]:80/", nil),
		"punycode":          newRequest(t, http.MethodGet, "http://bücher.example/", nil),
		"opaque":            {Method: http.MethodGet, URL: &url.URL{Scheme: "http", Opaque: "//app/o%20p", RawQuery: "q"}, Host: "app", Header: http.Header{"User-Agent": {""}}},
		"invalid host":      newRequest(t, http.MethodGet, "http://app/", nil),
		"many fields":       newRequest(t, http.MethodGet, "http://app/", manyFields(40)),
		"two agents":        newRequest(t, http.MethodGet, "http://app/", http.Header{"User-Agent": {"a/1", "b/2"}}),
		"empty agent first": newRequest(t, http.MethodGet, "http://app/", http.Header{"User-Agent": {"", "b/2"}}),
	}
	cases["invalid host"].Host = "app/evil path"
	closing := newRequest(t, http.MethodGet, "http://app/", nil)
	closing.Close = true
	cases["close"] = closing
	listed := newRequest(t, http.MethodGet, "http://app/", http.Header{"Connection": {"close"}})
	listed.Close = true
	cases["close listed"] = listed
	for name, req := range cases {
		t.Run(name, func(t *testing.T) {
			want := netHTTPHead(t, req)
			got, err := ourHead(req)
			if err != nil {
				t.Fatalf("head: %v", err)
			}
			if got != want {
				t.Errorf("the head written was\n%q\nnet/http writes\n%q", got, want)
			}
		})
	}
}

func manyFields(n int) http.Header {
	h := http.Header{}
	for i := range n {
		h["X-Field-"+strings.Repeat("a", i%7)+string(rune('A'+i%26))] = []string{"v"}
	}
	return h
}

// TestHeadSendsNoAgentOfItsOwn: without a User-Agent field, net/http would send its own;
// a proxy sends what the client sent.
func TestHeadSendsNoAgentOfItsOwn(t *testing.T) {
	req := newRequest(t, http.MethodGet, "http://app/", nil)
	delete(req.Header, "User-Agent")
	got, err := ourHead(req)
	if err != nil {
		t.Fatal(err)
	}
	if want := "GET / HTTP/1.1\r\nHost: app\r\n\r\n"; got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

// TestHeadRefusesWhatWouldSplitIt: a field or URI that would change the request's framing
// fails the request, where net/http drops or rewrites it.
func TestHeadRefusesWhatWouldSplitIt(t *testing.T) {
	cases := map[string]*http.Request{
		"newline in a value":  newRequest(t, http.MethodGet, "http://app/", http.Header{"X-A": {"a\r\nX-Injected: 1"}}),
		"newline in an agent": newRequest(t, http.MethodGet, "http://app/", http.Header{"User-Agent": {"a\nb"}}),
		"NUL in a value":      newRequest(t, http.MethodGet, "http://app/", http.Header{"X-A": {"a\x00b"}}),
		"space in a name":     newRequest(t, http.MethodGet, "http://app/", http.Header{"X A": {"v"}}),
		"colon in a name":     newRequest(t, http.MethodGet, "http://app/", http.Header{"X:A": {"v"}}),
		"method":              newRequest(t, "GET /x HTTP/1.1\r\n", "http://app/", nil),
		"newline, opaque":     {Method: http.MethodGet, URL: &url.URL{Opaque: "/a\nb"}, Host: "app", Header: http.Header{}},
		"newline in a query":  {Method: http.MethodGet, URL: &url.URL{Path: "/", RawQuery: "a\r\nb"}, Host: "app", Header: http.Header{}},
		"space in a query":    {Method: http.MethodGet, URL: &url.URL{Path: "/", RawQuery: "a HTTP/1.0\r\n"}, Host: "app", Header: http.Header{}},
	}
	for name, req := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ourHead(req)
			if err == nil {
				t.Fatalf("the head written was %q, want an error", got)
			}
			if !errors.Is(err, errUnsendable) {
				t.Errorf("error %v is not errUnsendable", err)
			}
		})
	}
}

func TestHeadAllocatesNothing(t *testing.T) {
	req := newRequest(t, http.MethodGet, "http://app:8080/api/v1/items?page=2", http.Header{
		"Accept": {"*/*"}, "Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"User-Agent": {"fortio.org/fortio-1.68.2"}, "X-Request-Id": {"f0f1"},
	})
	w := bufio.NewWriter(io.Discard)
	allocs := testing.AllocsPerRun(100, func() {
		var h head
		if err := h.prepare(req); err != nil {
			t.Fatal(err)
		}
		if err := h.write(w); err != nil {
			t.Fatal(err)
		}
		w.Reset(io.Discard)
	})
	if allocs != 0 {
		t.Errorf("a head allocates %v times per request, want 0", allocs)
	}
}

// FuzzWriteHead: whatever a head writes parses back, with net/http's parser, into the
// request it was given; and when net/http would write the same fields, it writes the same
// bytes.
func FuzzWriteHead(f *testing.F) {
	f.Add("GET", "/a?b=c", "app:80", "X-A", "v", "curl")
	f.Add("POST", "/%2F?", "[fe80::1%25lo]:1", "Cookie", " a=1 ", "")
	f.Add("", "/", "bücher.example", "X-Obs", "caf\xc3\xa9", "agent\n")
	f.Fuzz(func(t *testing.T, method, target, host, name, value, agent string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") {
			return // the transport sends the origin form: an absolute path and a query
		}
		req := &http.Request{Method: method, URL: u, Host: host, Header: http.Header{name: {value}, "User-Agent": {agent}}}
		got, err := ourHead(req)
		if err != nil {
			return
		}
		parsed, err := http.ReadRequest(bufio.NewReader(strings.NewReader(got)))
		if err != nil {
			t.Fatalf("net/http cannot read what the head written was: %v\n%q", err, got)
		}
		if parsed.RequestURI != u.RequestURI() {
			t.Errorf("request URI %q, want %q", parsed.RequestURI, u.RequestURI())
		}
		if wantMethod := cmpOr(method, "GET"); parsed.Method != wantMethod {
			t.Errorf("method %q, want %q", parsed.Method, wantMethod)
		}
		if !excluded(http.CanonicalHeaderKey(name)) && name == http.CanonicalHeaderKey(name) {
			if v := parsed.Header.Get(name); v != strings.Trim(value, " \t") {
				t.Errorf("%s: %q, want %q", name, v, strings.Trim(value, " \t"))
			}
		}
		if want := netHTTPHead(t, req); got != want {
			t.Errorf("the head written was\n%q\nnet/http writes\n%q", got, want)
		}
	})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
