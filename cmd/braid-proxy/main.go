// Command braid-proxy is Braid's sidecar proxy.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "braid-proxy:", err)
		os.Exit(1)
	}
}

func run() error {
	host, _ := os.Hostname()
	opts := proxy.Options{}
	fs := flag.NewFlagSet("braid-proxy", flag.ContinueOnError)
	fs.StringVar(&opts.ControlPlane, "control-plane", envOr("BRAID_CONTROL_PLANE", "braid-operator.braid-system.svc:15010"), "address of the operator's config server")
	fs.StringVar(&opts.OutboundAddr, "outbound-listen", "127.0.0.1:15001", "address of the explicit outbound HTTP listener")
	fs.StringVar(&opts.AdminAddr, "admin-listen", "127.0.0.1:15000", "address of the admin server (/ready, /live, /config)")
	fs.StringVar(&opts.ProxyID, "proxy-id", envOr("POD_NAME", fmt.Sprintf("%s-%d", host, os.Getpid())), "unique name of this proxy")
	fs.StringVar(&opts.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the workload the proxy serves")
	fs.StringVar(&opts.ServiceAccount, "service-account", envOr("POD_SERVICE_ACCOUNT", "default"), "service account of the workload the proxy serves")
	fs.StringVar(&opts.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	fs.DurationVar(&opts.DrainTimeout, "drain-timeout", 20*time.Second, "how long shutdown waits for requests in flight")
	verbosity := fs.Int("v", 0, "log verbosity: 0 or 1")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-*verbosity)}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return proxy.Run(ctx, log, opts)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
