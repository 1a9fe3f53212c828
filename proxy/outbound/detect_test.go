package outbound

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	clientHello := "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
	cases := map[string]detected{
		"":                                     needMore,
		"G":                                    needMore,
		"GET":                                  needMore,
		"GET ":                                 needMore,
		"GET /":                                needMore,
		"GET /index.html HTTP/":                needMore,
		"GET /index.html HTTP/1.1\r\n":         isHTTP,
		"GET / HTTP/1.0\r\n":                   isHTTP,
		"POST /api?x=1 HTTP/1.1":               isHTTP,
		"M-SEARCH * HTTP/1.1\r\n":              isHTTP,
		"OPTIONS * HTTP/1.1\r\n":               isHTTP,
		"CONNECT example.com:443 HTTP/1.1":     isHTTP,
		"P":                                    needMore,
		"PRI * HTTP/2.0\r\n":                   needMore,
		h2Preface:                              isHTTP,
		h2Preface + "\x00\x00\x12\x04":         isHTTP,
		"GET / HTTP/2.0\r\n":                   isOpaque,
		"GET / HTTP/1.2\r\n":                   isOpaque,
		"GET / FTP/1.1\r\n":                    isOpaque,
		"GET  / HTTP/1.1\r\n":                  isOpaque, // an empty target
		" GET / HTTP/1.1\r\n":                  isOpaque,
		"get / HTTP/1.1\r\n":                   isOpaque,
		"GET /\x00 HTTP/1.1\r\n":               isOpaque,
		"GET /\r\n":                            isOpaque, // HTTP/0.9 is not served
		clientHello:                            isOpaque,
		"\x00\x00\x00\x08\x04\xd2\x16\x2f":     isOpaque, // a Postgres SSLRequest
		"SSH-2.0-OpenSSH_9.6\r\n":              isOpaque,
		"EHLO mail.example.com\r\n":            isOpaque,
		"PING\r\n":                             isOpaque,
		"*1\r\n$4\r\nPING\r\n":                 isOpaque,
		"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/":   isOpaque, // no method is that long
		"GET /" + strings.Repeat("a", maxPeek): isHTTP,
	}
	for in, want := range cases {
		if got := classify([]byte(in)); got != want {
			t.Errorf("classify(%.80q) = %s, want %s", in, got, want)
		}
	}
}

// A loopback connection pair: the client's end and the proxy's.
func connPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	client, err = net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return client, server
}

func TestDetect(t *testing.T) {
	const wait = 200 * time.Millisecond
	cases := map[string]struct {
		// writes are sent by the client one after the other, 20 ms apart.
		writes    []string
		closeSide bool // the client half-closes after writing
		want      detected
		// waits says that detection had to wait the whole detection time.
		waits bool
	}{
		"HTTP/1":                             {writes: []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}, want: isHTTP},
		"HTTP/2 preface":                     {writes: []string{h2Preface}, want: isHTTP},
		"HTTP/1 in pieces":                   {writes: []string{"GE", "T /path", " HTTP/1.1\r\n"}, want: isHTTP},
		"HTTP/2 preface in pieces":           {writes: []string{"PRI * HT", "TP/2.0\r\n\r\nSM\r\n\r\n"}, want: isHTTP},
		"TLS ClientHello":                    {writes: []string{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"}, want: isOpaque},
		"server speaks first: silence":       {want: isOpaque, waits: true},
		"partial request line, then nothing": {writes: []string{"GET /slow"}, want: isOpaque, waits: true},
		"partial, then half-close":           {writes: []string{"GET /"}, closeSide: true, want: isOpaque},
		"half-close without a byte":          {closeSide: true, want: isOpaque},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, server := connPair(t)
			go func() {
				for i, w := range c.writes {
					if i > 0 {
						time.Sleep(20 * time.Millisecond)
					}
					_, _ = client.Write([]byte(w))
				}
				if c.closeSide {
					_ = client.(*net.TCPConn).CloseWrite()
				}
			}()
			start := time.Now()
			got, peeked, err := detect(server, wait)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("detected %s, want %s", got, c.want)
			}
			// Every byte read is kept for whoever reads the connection next.
			if all := strings.Join(c.writes, ""); !strings.HasPrefix(all, string(peeked)) || (got == isOpaque && string(peeked) != all) {
				t.Errorf("peeked %q of %q", peeked, all)
			}
			checkWait(t, elapsed, wait, c.waits)
		})
	}
}

// checkWait checks that detection took the whole wait if it had to, and no more, or
// less than the wait if it did not.
func checkWait(t *testing.T, elapsed, wait time.Duration, waits bool) {
	t.Helper()
	switch {
	case waits && elapsed < wait:
		t.Errorf("decided after %v, before the detection wait of %v", elapsed, wait)
	case waits && elapsed > wait+time.Second:
		t.Errorf("decided after %v, long after the detection wait of %v", elapsed, wait)
	case !waits && elapsed >= wait:
		t.Errorf("waited %v: the bytes decided it sooner", elapsed)
	}
}

// After detection the connection has no read deadline left: a slow client is not cut off.
func TestDetectClearsTheDeadline(t *testing.T) {
	client, server := connPair(t)
	go func() { _, _ = client.Write([]byte("GET / HTTP/1.1\r\n")) }()
	if got, _, err := detect(server, 50*time.Millisecond); err != nil || got != isHTTP {
		t.Fatalf("detect = %s, %v", got, err)
	}
	go func() {
		time.Sleep(150 * time.Millisecond)
		_, _ = client.Write([]byte("Host: x\r\n"))
	}()
	buf := make([]byte, 64)
	if _, err := server.Read(buf); err != nil {
		t.Fatalf("reading after detection: %v", err)
	}
}
