package main

import (
	"os"
	"path/filepath"
	"testing"
)

// How --webhook-certs and --webhook-cert-dir pick the webhooks' certificate.
func TestPlanWebhooks(t *testing.T) {
	mounted := t.TempDir()
	for _, f := range webhookCertFiles {
		if err := os.WriteFile(filepath.Join(mounted, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	empty := t.TempDir()
	keyOnly := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyOnly, "tls.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mode, dir string
		inCluster bool
		want      string // "" = an error
	}{
		"auto, certificate mounted":            {mode: "auto", dir: mounted, inCluster: true, want: webhookCertsDir},
		"auto, certificate mounted, local run": {mode: "auto", dir: mounted, want: webhookCertsDir},
		"auto, in a pod":                       {mode: "auto", inCluster: true, want: webhookCertsSelf},
		"auto, empty folder, in a pod":         {mode: "auto", dir: empty, inCluster: true, want: webhookCertsSelf},
		"auto, key without certificate":        {mode: "auto", dir: keyOnly, inCluster: true, want: webhookCertsSelf},
		"auto, local run":                      {mode: "auto", want: webhookCertsOff},
		"self, local run":                      {mode: "self", want: webhookCertsSelf},
		"self ignores a mounted certificate":   {mode: "self", dir: mounted, want: webhookCertsSelf},
		"off in a pod":                         {mode: "off", dir: mounted, inCluster: true, want: webhookCertsOff},
		"dir":                                  {mode: "dir", dir: mounted, want: webhookCertsDir},
		"dir without files":                    {mode: "dir", dir: empty},
		"dir without a folder":                 {mode: "dir"},
		"unknown mode":                         {mode: "cert-manager"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := planWebhooks(tc.mode, tc.dir, tc.inCluster)
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("plan %q, want an error", got.mode)
			case tc.want != "" && err != nil:
				t.Fatal(err)
			case got.mode != tc.want:
				t.Fatalf("plan %q (%s), want %q", got.mode, got.reason, tc.want)
			}
		})
	}
}
