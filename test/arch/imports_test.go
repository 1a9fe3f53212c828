// Package arch checks the dependency rules of DESIGN.md on the real import graph.
package arch

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/braidmesh/braid/test/harness"
)

func deps(t *testing.T, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", pkg)
	cmd.Dir = harness.RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func forbid(t *testing.T, pkg string, prefixes ...string) {
	t.Helper()
	all := deps(t, pkg)
	if len(all) < 10 {
		t.Fatalf("go list -deps %s listed only %v: the check would prove nothing", pkg, all)
	}
	for _, d := range all {
		for _, p := range prefixes {
			if d == p || strings.HasPrefix(d, p+"/") {
				t.Errorf("%s depends on %s (forbidden: %s)", pkg, d, p)
			}
		}
	}
}

// The proxy runs in every pod: it carries no Kubernetes client and no control-plane code.
func TestProxyImportsNoKubernetesClient(t *testing.T) {
	forbid(t, "./cmd/braid-proxy",
		"k8s.io/client-go", "sigs.k8s.io/controller-runtime", "k8s.io/apimachinery",
		"github.com/braidmesh/braid/internal", "github.com/braidmesh/braid/controllers")
}

// braid-init's netlink and nftables code, which runs once as root, stays out of the
// sidecar that runs for the pod's whole life (and counts in its resident memory).
func TestProxyLinksNoInterceptionSetup(t *testing.T) {
	forbid(t, "./cmd/braid-proxy",
		"github.com/google/nftables", "github.com/mdlayher/netlink", "github.com/braidmesh/braid/proxy/netinit")
}

// The compiler is pure: plain objects in, proxy config out.
func TestCompilerImportsNoKubernetesClient(t *testing.T) {
	forbid(t, "./internal/mesh", "k8s.io/client-go", "sigs.k8s.io/controller-runtime",
		"github.com/braidmesh/braid/controllers", "github.com/braidmesh/braid/internal/configserver")
}
