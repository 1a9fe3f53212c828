package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"
)

// runAwait waits until the proxy's admin server says it is ready: the postStart hook of a
// proxy injected as a regular container (clusters without native sidecars), so that the
// application's containers start only once the proxy is ready.
func runAwait(args []string) error {
	fs := flag.NewFlagSet("braid-proxy await", flag.ContinueOnError)
	admin := fs.String("admin", "127.0.0.1:15000", "address of the proxy's admin server")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait")
	interval := fs.Duration("interval", 100*time.Millisecond, "how often to ask")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return fmt.Errorf("parsing the command line: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return awaitReady(ctx, "http://"+*admin+"/ready", *interval)
}

func awaitReady(ctx context.Context, url string, interval time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("building the readiness request: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy did not become ready: %w", last)
		case <-time.After(interval):
		}
	}
}
