// Command braid-proxy is Braid's sidecar proxy.
//
//	braid-proxy [flags]                    streams its configuration from the control plane
//	braid-proxy run --config FILE [flags]  runs standalone from a config file (docs/proxy-config.md)
package main

import (
	"context"
	"errors"
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
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "braid-proxy:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	standalone := len(args) > 0 && args[0] == "run"
	name := "braid-proxy"
	if standalone {
		args, name = args[1:], "braid-proxy run"
	}
	opts := proxy.Options{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var verbosity *int
	if standalone {
		// Without a control plane the namespace only completes bare service names.
		verbosity = commonFlags(fs, &opts, envOr("POD_NAMESPACE", "default"))
		fs.StringVar(&opts.ConfigFile, "config", "", "file holding the proxy's configuration, YAML or JSON (required); reloaded when it changes")
		fs.DurationVar(&opts.ConfigPoll, "config-poll", time.Second, "how often the config file is checked for changes")
	} else {
		verbosity = commonFlags(fs, &opts, os.Getenv("POD_NAMESPACE"))
		host, _ := os.Hostname()
		fs.StringVar(&opts.ControlPlane, "control-plane", envOr("BRAID_CONTROL_PLANE", "braid-operator.braid-system.svc:15010"), "address of the operator's config server")
		fs.StringVar(&opts.ProxyID, "proxy-id", envOr("POD_NAME", fmt.Sprintf("%s-%d", host, os.Getpid())), "unique name of this proxy")
		fs.StringVar(&opts.ServiceAccount, "service-account", envOr("POD_SERVICE_ACCOUNT", "default"), "service account of the workload the proxy serves")
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return fmt.Errorf("parsing the command line: %w", err)
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q (the only subcommand is run)", fs.Args())
	case standalone && opts.ConfigFile == "":
		return errors.New("run needs --config FILE")
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-*verbosity)}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return proxy.Run(ctx, log, opts)
}

// commonFlags defines the flags of both modes on fs, the namespace defaulting to
// namespace, and returns the log verbosity.
func commonFlags(fs *flag.FlagSet, opts *proxy.Options, namespace string) *int {
	fs.StringVar(&opts.OutboundAddr, "outbound-listen", "127.0.0.1:15001", "address of the explicit outbound HTTP listener")
	fs.StringVar(&opts.AdminAddr, "admin-listen", "127.0.0.1:15000", "address of the admin server (/ready, /live, /config, /metrics, /debug/pprof/)")
	fs.StringVar(&opts.Namespace, "namespace", namespace, "namespace of the workload the proxy serves")
	fs.StringVar(&opts.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	fs.DurationVar(&opts.DrainTimeout, "drain-timeout", 20*time.Second, "how long shutdown waits for requests in flight")
	return fs.Int("v", 0, "log verbosity: 0 or 1")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
