// Command braid-proxy is Braid's sidecar proxy.
//
//	braid-proxy [flags]                    streams its configuration from the control plane
//	braid-proxy run --config FILE [flags]  runs standalone from a config file (docs/proxy-config.md)
//
// The pod's init container, which redirects its TCP to the proxy, is braid-init
// (cmd/braid-init), shipped in the same image.
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
	if len(args) > 0 && args[0] == "init" {
		return errors.New("init is braid-init now, a binary of its own in the same image (/braid-init)")
	}
	if len(args) > 0 && args[0] == "await" {
		return runAwait(args[1:])
	}
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
		fs.BoolVar(&opts.ControlPlaneTLS, "control-plane-tls", os.Getenv("BRAID_CONTROL_PLANE_TLS") == "true", "dial the control plane over mTLS with the workload certificate (needs an identity)")
		fs.StringVar(&opts.ControlPlaneServerName, "control-plane-server-name", "", "name the control plane's certificate must carry (default: the host of --control-plane)")
		fs.StringVar(&opts.IdentityAddr, "identity-address", os.Getenv("BRAID_IDENTITY_ADDRESS"), "address of the operator's identity service (host:port); empty runs without a workload certificate")
		fs.StringVar(&opts.TokenFile, "token-file", os.Getenv("BRAID_TOKEN_FILE"), "projected ServiceAccount token (audience braid) proving the proxy's identity")
		fs.StringVar(&opts.TrustDomain, "trust-domain", envOr("BRAID_TRUST_DOMAIN", "cluster.local"), "trust domain of the proxy's SPIFFE ID")
	}
	gc := gcFlags(fs)
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return fmt.Errorf("parsing the command line: %w", err)
	}
	if err := gc.apply(); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q (the subcommands are run and init)", fs.Args())
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
	fs.StringVar(&opts.InboundAddr, "inbound-listen", "", "address of the inbound listener (mTLS from peer proxies, and redirected plaintext); empty: none")
	fs.StringVar(&opts.AppHost, "app-host", "127.0.0.1", "address the application listens on, as the proxy reaches it")
	fs.StringVar(&opts.CertFile, "cert-file", "", "PEM workload certificate chain to use instead of the identity service (with --key-file and --trust-bundle-file)")
	fs.StringVar(&opts.KeyFile, "key-file", "", "PEM private key of --cert-file")
	fs.StringVar(&opts.TrustBundleFile, "trust-bundle-file", os.Getenv("BRAID_TRUST_BUNDLE_FILE"), "PEM roots peers' certificates (and the identity service's) must chain to (the braid-trust-bundle ConfigMap)")
	fs.StringVar(&opts.AppProbes, "app-probes", os.Getenv("BRAID_APP_PROBES"), "JSON of the application probes served on the admin port's /app-probe/ (set by the injector; docs/injection.md)")
	return fs.Int("v", 0, "log verbosity: 0 or 1")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
