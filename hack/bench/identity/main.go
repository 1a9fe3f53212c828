// Command identity benchmarks certificate issuance: certificates signed per second on one
// core (CSR checks included), against raw ECDSA P-256 signatures per second on the same
// core in the same run (the floor cost of any certificate), and the latency of Certify
// through the real gRPC server with TokenReview stubbed at the edge.
//
// Run it with `make bench-identity`.
package main

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/utils/clock"

	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/internal/identityserver"
	"github.com/braidmesh/braid/proxy/api"
)

const td = "cluster.local"

// cachedReviewer stands in for TokenReview (whose cost is the API server's, and which the
// operator caches): every token is the ServiceAccount bench/web.
type cachedReviewer struct{}

func (cachedReviewer) Review(context.Context, string) (string, string, error) {
	return "bench", "web", nil
}

func main() {
	duration := flag.Duration("duration", 3*time.Second, "how long each measurement runs")
	clients := flag.Int("clients", 16, "concurrent gRPC clients for the Certify measurement")
	flag.Parse()
	if err := run(*duration, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(d time.Duration, clients int) error {
	now := time.Now()
	root, err := identity.NewRoot(td, now, 365*24*time.Hour)
	if err != nil {
		return err
	}
	inter, err := identity.NewIntermediate(root, td, now, 30*24*time.Hour)
	if err != nil {
		return err
	}
	issuer, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, td, now)
	if err != nil {
		return err
	}
	id := identity.ID{TrustDomain: td, Namespace: "bench", ServiceAccount: "web"}
	csrs := make([][]byte, 256)
	for i := range csrs {
		if csrs[i], _, err = identity.NewCSR(id); err != nil {
			return err
		}
	}

	prev := runtime.GOMAXPROCS(1)
	raw, err := rawSignatures(d)
	if err != nil {
		return err
	}
	signed, err := signs(issuer, csrs, id, d)
	runtime.GOMAXPROCS(prev)
	if err != nil {
		return err
	}
	rate, lat, err := certifyOverGRPC(issuer, root, csrs, d, clients)
	if err != nil {
		return err
	}
	report(raw, signed, rate, lat, clients)
	return nil
}

func rawSignatures(d time.Duration) (float64, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	digest := sha256.Sum256([]byte("braid"))
	n, start := 0, time.Now()
	for time.Since(start) < d {
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func signs(issuer *identity.Issuer, csrs [][]byte, id identity.ID, d time.Duration) (float64, error) {
	n, start := 0, time.Now()
	for time.Since(start) < d {
		if _, _, err := issuer.Sign(csrs[n%len(csrs)], id, time.Now(), 24*time.Hour); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func certifyOverGRPC(issuer *identity.Issuer, root *identity.KeyPair, csrs [][]byte, d time.Duration, clients int) (float64, []time.Duration, error) {
	srv := identityserver.New(logr.Discard(), cachedReviewer{},
		&identityserver.Authority{Issuer: issuer, Bundle: identity.BundlePEM(root.Cert)}, 24*time.Hour, clock.RealClock{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	gs := grpc.NewServer()
	api.RegisterIdentityServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = conn.Close() }()
	client := api.NewIdentityServiceClient(conn)
	var (
		mu   sync.Mutex
		lats []time.Duration
		wg   sync.WaitGroup
		errs = make(chan error, clients)
	)
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for i := c; time.Since(start) < d; i += clients {
				t0 := time.Now()
				if _, err := client.Certify(context.Background(), &api.CertifyRequest{Csr: csrs[i%len(csrs)], Token: "cached"}); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				lats = append(lats, time.Since(t0))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, nil, err
	}
	return float64(len(lats)) / time.Since(start).Seconds(), lats, nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.SortFunc(s, cmp.Compare)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func report(raw, signed, rate float64, lat []time.Duration, clients int) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("\nBraid certificate issuance (ECDSA P-256 leaves, 24 h)\n\n")
	fmt.Printf("| %-58s | %12s | %10s |\n", "measure", "value", "budget")
	fmt.Printf("|%s|%s|%s|\n", strings.Repeat("-", 60), strings.Repeat("-", 14), strings.Repeat("-", 12))
	row := func(name, value, budget string) { fmt.Printf("| %-58s | %12s | %10s |\n", name, value, budget) }
	row("baseline: raw ECDSA P-256 signatures per second, one core", fmt.Sprintf("%.0f/s", raw), "")
	row("certificates signed per second, one core (CSR checked)", fmt.Sprintf("%.0f/s", signed), ">= 2000/s")
	row("ratio certificates/raw signatures", fmt.Sprintf("%.2f", signed/raw), "")
	row(fmt.Sprintf("Certify over gRPC, %d clients, both cores", clients), fmt.Sprintf("%.0f/s", rate), "")
	row("Certify latency p50", ms(percentile(lat, 0.5)), "")
	row("Certify latency p99", ms(percentile(lat, 0.99)), "")
	fmt.Printf("\nTokenReview is stubbed (it is the API server's cost, and reviews are cached); the gRPC\nclients run in the same process as the server.\n")
}
