package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// GatewayAPICRDs returns the folder of the standard-channel Gateway API CRDs in the
// sigs.k8s.io/gateway-api module Braid is built with: the CRDs users install themselves,
// at the version Braid is tested against. Braid does not ship them.
func GatewayAPICRDs() (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = RepoRoot()
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("finding the gateway-api module (go list -m sigs.k8s.io/gateway-api): %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
	if _, err := os.Stat(filepath.Join(dir, "gateway.networking.k8s.io_httproutes.yaml")); err != nil {
		return "", fmt.Errorf("the gateway-api module has no HTTPRoute CRD: %w", err)
	}
	return dir, nil
}
