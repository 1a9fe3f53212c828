// Command braid is Braid's command line.
//
//	braid up      start a real single-node Kubernetes cluster on this machine (root)
//	braid down    stop it and undo every change it made to the host (root)
//	braid status  say what runs
//
// The cluster is built from parts that need no registry and no Docker: containerd, runc
// and the CNI plugins from Debian, Kubernetes, etcd and CoreDNS built from their Go
// modules (hack/cluster-binaries.sh), and images made of static Go binaries (make images).
// Everything it writes lives under one state folder (--state-dir, /var/lib/braid-cluster),
// except what the kubelet and containerd insist on writing elsewhere, which `braid down`
// removes. docs/cluster.md describes the layout, the network and the teardown.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

const usage = `braid: a real single-node Kubernetes cluster on this machine, for Braid.

Usage:
  braid up [flags]      start the cluster (or reuse the running one) and print how to use it
  braid down [flags]    stop every process up started and undo its host changes; idempotent
  braid status [flags]  show the cluster's processes and node

up and down need root: they install packages, create a bridge, nftables tables and cgroups,
change sysctls and run containerd and the kubelet.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("braid", flag.ContinueOnError)
	fs.Usage = func() {
		_, _ = fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	var o options
	fs.StringVar(&o.stateDir, "state-dir", envOr("BRAID_STATE_DIR", "/var/lib/braid-cluster"), "folder holding all of the cluster's state, logs, certificates and kubeconfig")
	fs.StringVar(&o.binDir, "bin-dir", os.Getenv("BRAID_CLUSTER_BIN"), "folder with kube-apiserver, kubelet, etcd, coredns... (hack/cluster-binaries.sh prints it); default: the newest bin/cluster/k8s-* of this checkout")
	fs.StringVar(&o.imagesDir, "images", os.Getenv("BRAID_IMAGES"), "folder of image tarballs to import into containerd (make images); default: bin/images of this checkout")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long up waits for the node to be Ready")
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	cmd := args[0]
	if err := fs.Parse(args[1:]); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "up":
		if err = needRoot("up"); err == nil {
			err = up(ctx, &o)
		}
	case "down":
		if err = needRoot("down"); err == nil {
			err = down(ctx, newLayout(o.stateDir), os.Stdout)
		}
	case "status":
		err = status(ctx, newLayout(o.stateDir), os.Stdout)
	case "help", "-h", "--help":
		fs.Usage()
		return 0
	default:
		_, _ = fmt.Fprintf(os.Stderr, "braid: unknown command %q\n\n", cmd)
		fs.Usage()
		return 2
	}
	if err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "braid:", err)
		return 1
	}
	return 0
}

type options struct {
	stateDir, binDir, imagesDir string
	timeout                     time.Duration
}

func needRoot(cmd string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("braid %s needs root: it installs packages, creates a network bridge, nftables tables and cgroups, changes sysctls and runs containerd and the kubelet (try: sudo braid %s)", cmd, cmd)
	}
	return nil
}

// resolveDirs fills in the binaries' and images' folders from this checkout when the
// flags leave them empty.
func (o *options) resolveDirs() error {
	root, _ := repoRoot()
	if o.binDir == "" {
		if root == "" {
			return errors.New("no --bin-dir and not inside the Braid checkout: run hack/cluster-binaries.sh and pass the folder it prints")
		}
		dirs, _ := filepath.Glob(filepath.Join(root, "bin", "cluster", "k8s-*"))
		var ok []string
		for _, d := range dirs {
			if isExecutable(filepath.Join(d, "kubelet")) && isExecutable(filepath.Join(d, "coredns")) {
				ok = append(ok, d)
			}
		}
		if len(ok) == 0 {
			return fmt.Errorf("no cluster binaries under %s: run hack/cluster-binaries.sh (or make up) first", filepath.Join(root, "bin", "cluster"))
		}
		sort.Strings(ok)
		o.binDir = ok[len(ok)-1]
	}
	for _, b := range clusterBinaries {
		if !isExecutable(filepath.Join(o.binDir, b)) {
			return fmt.Errorf("%s is missing from %s: run hack/cluster-binaries.sh", b, o.binDir)
		}
	}
	if o.imagesDir == "" && root != "" {
		o.imagesDir = filepath.Join(root, "bin", "images")
	}
	return nil
}

var clusterBinaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "coredns"}

// repoRoot is the Braid checkout holding the working directory, if any.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && len(b) > 0 && containsModule(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not in the Braid checkout")
		}
		dir = parent
	}
}

func containsModule(gomod []byte) bool {
	const m = "module github.com/braidmesh/braid\n"
	return len(gomod) >= len(m) && string(gomod[:len(m)]) == m
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
