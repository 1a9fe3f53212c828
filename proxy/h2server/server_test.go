package h2server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

type ctxKey struct{}

func TestGetAndPostRoundTrip(t *testing.T) {
	srv := &Server{
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, "peer-id")
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				t.Errorf("reading the body: %v", err)
			}
			h := w.Header()
			h.Set("X-Method", r.Method)
			h.Set("X-Path", r.URL.Path)
			h.Set("X-Query", r.URL.RawQuery)
			h.Set("X-Request-Uri", r.RequestURI)
			h.Set("X-Proto", fmt.Sprintf("%s %d.%d", r.Proto, r.ProtoMajor, r.ProtoMinor))
			h.Set("X-Host", r.Host)
			h.Set("X-Echo", r.Header.Get("X-Test"))
			h.Set("X-Cookie", strings.Join(r.Header["Cookie"], "|"))
			h.Set("X-Content-Length", strconv.FormatInt(r.ContentLength, 10))
			h.Set("X-Tls", strconv.FormatBool(r.TLS != nil && r.TLS.NegotiatedProtocol == "h2"))
			h.Set("X-Remote", strconv.FormatBool(r.RemoteAddr != "" && strings.HasPrefix(r.RemoteAddr, "127.0.0.1:")))
			h.Set("X-Conn-Value", fmt.Sprint(r.Context().Value(ctxKey{})))
			status := http.StatusOK
			if r.Method == http.MethodPost {
				status = http.StatusCreated
			}
			w.WriteHeader(status)
			_, _ = w.Write(append([]byte("got:"), body...))
		}),
	}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)

	req, _ := http.NewRequest(http.MethodGet, h.url+"/a/b?x=1", nil)
	req.Header.Set("X-Test", "hello")
	req.Header.Set("Cookie", "a=1; b=2")
	res := fetch(t, client, req)
	want := map[string]string{
		"X-Method": "GET", "X-Path": "/a/b", "X-Query": "x=1", "X-Request-Uri": "/a/b?x=1",
		"X-Proto": "HTTP/2.0 2.0", "X-Host": h.addr, "X-Echo": "hello", "X-Cookie": "a=1; b=2",
		"X-Content-Length": "0", "X-Tls": "true", "X-Remote": "true", "X-Conn-Value": "peer-id",
		"Content-Length": "4",
	}
	check(t, res, http.StatusOK, want, "got:")

	req, _ = http.NewRequest(http.MethodPost, h.url+"/post", strings.NewReader("payload"))
	res = fetch(t, client, req)
	check(t, res, http.StatusCreated, map[string]string{"X-Method": "POST", "X-Content-Length": "7"}, "got:payload")

	// A body of unknown length.
	req, _ = http.NewRequest(http.MethodPut, h.url+"/put", io.MultiReader(strings.NewReader("un"), strings.NewReader("known")))
	res = fetch(t, client, req)
	check(t, res, http.StatusOK, map[string]string{"X-Method": "PUT", "X-Content-Length": "-1"}, "got:unknown")
	if res.proto != 2 {
		t.Errorf("response protocol major %d, want 2", res.proto)
	}
}

func TestStatusCodesAndHead(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		w.Header().Set("Connection", "close") // connection-specific: must not be sent
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "body")
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	for _, code := range []int{200, 204, 304, 404, 418, 503} {
		req, _ := http.NewRequest(http.MethodGet, h.url+"/"+strconv.Itoa(code), nil)
		res := fetch(t, client, req)
		body := "body"
		if code == 204 || code == 304 {
			body = ""
		}
		check(t, res, code, nil, body)
		if res.header.Get("Connection") != "" {
			t.Errorf("status %d: Connection header was sent", code)
		}
	}
	req, _ := http.NewRequest(http.MethodHead, h.url+"/200", nil)
	res := fetch(t, client, req)
	check(t, res, http.StatusOK, map[string]string{"Content-Length": "4"}, "")
}

// result is a response read whole.
type result struct {
	status          int
	proto           int
	header, trailer http.Header
	body            []byte
}

// fetch sends req and reads its response whole.
func fetch(t *testing.T, client *http.Client, req *http.Request) result {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close() //nolint:errcheck // read whole below
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the response body after %d bytes: %v", req.Method, req.URL, len(body), err)
	}
	return result{status: resp.StatusCode, proto: resp.ProtoMajor, header: resp.Header, trailer: resp.Trailer, body: body}
}

func check(t *testing.T, res result, code int, header map[string]string, body string) {
	t.Helper()
	if res.status != code {
		t.Errorf("status %d, want %d", res.status, code)
	}
	for k, v := range header {
		if res.header.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, res.header.Get(k), v)
		}
	}
	if string(res.body) != body {
		t.Errorf("body %q, want %q", res.body, body)
	}
}
