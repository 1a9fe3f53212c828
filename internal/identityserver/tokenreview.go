package identityserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// KubeTokenReviewer authenticates tokens with the Kubernetes TokenReview API.
type KubeTokenReviewer struct {
	Client client.Client
}

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create

// Review asks the API server whether token authenticates a ServiceAccount for Audience.
func (r KubeTokenReviewer) Review(ctx context.Context, token string) (namespace, serviceAccount string, err error) {
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}}}
	if err := r.Client.Create(ctx, tr); err != nil {
		return "", "", fmt.Errorf("creating a TokenReview: %w", err)
	}
	st := tr.Status
	switch {
	case !st.Authenticated:
		why := st.Error
		if why == "" {
			why = "the API server did not authenticate it"
		}
		return "", "", fmt.Errorf("%w: %s", ErrUnauthenticated, why)
	case !slices.Contains(st.Audiences, Audience):
		return "", "", fmt.Errorf("%w: the token is not for audience %q", ErrUnauthenticated, Audience)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, "system:serviceaccount:"), ":")
	if !strings.HasPrefix(st.User.Username, "system:serviceaccount:") || !ok || ns == "" || sa == "" {
		return "", "", fmt.Errorf("%w: %q is not a ServiceAccount", ErrUnauthenticated, st.User.Username)
	}
	return ns, sa, nil
}
