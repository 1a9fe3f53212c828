package inject

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/version"
)

// nativeSidecarsSince is the first Kubernetes version that runs native sidecars by default
// (the SidecarContainers feature, beta and on since 1.29).
var nativeSidecarsSince = version.MajorMinor(1, 29)

// NativeSidecars reports whether an API server of gitVersion (its /version, such as
// v1.36.3 or v1.29.1-gke.1589000) runs native sidecars.
func NativeSidecars(gitVersion string) (bool, error) {
	v, err := version.ParseGeneric(gitVersion)
	if err != nil {
		return false, fmt.Errorf("the API server's version %q: %w", gitVersion, err)
	}
	return v.AtLeast(nativeSidecarsSince), nil
}
