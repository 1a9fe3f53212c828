package outbound

import (
	"errors"
	"fmt"
	"testing"

	"github.com/braidmesh/braid/proxy/h2client"
)

// TestUnprocessedRequestsCountAsConnectFailures: a request the peer proxy refused or
// dropped unprocessed (GOAWAY, REFUSED_STREAM) reached no application, so it is retried as
// a connection failure is, even when it is not idempotent.
func TestUnprocessedRequestsCountAsConnectFailures(t *testing.T) {
	wrapped := fmt.Errorf("attempt 1: %w", fmt.Errorf("peer: %w", h2client.ErrNotProcessed))
	if !isConnectFailure(wrapped) {
		t.Fatalf("isConnectFailure(%v) = false; want true", wrapped)
	}
	if isConnectFailure(errors.New("stream reset by the server (INTERNAL_ERROR)")) {
		t.Fatal("a reset after processing counted as a connect failure")
	}
}
