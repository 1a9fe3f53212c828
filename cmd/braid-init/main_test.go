package main

import (
	"strings"
	"testing"
)

func TestInitDryRun(t *testing.T) {
	var out strings.Builder
	err := run([]string{"--proxy-uid", "2102", "--inbound-port", "15006", "--outbound-port", "15001",
		"--skip-inbound-ports", "15000,15006", "--skip-outbound-ports", "25,3306",
		"--skip-outbound-cidrs", "10.0.0.0/8,fd00::/8", "--dry-run"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"table inet braid {", "meta skuid 2102 return", "tcp dport 3306 return",
		"ip6 daddr fd00::/8 return", "redirect to :15001", "redirect to :15006"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--dry-run printed no %q:\n%s", want, out.String())
		}
	}
	// Empty lists are fine.
	out.Reset()
	if err := run([]string{"--proxy-uid", "2102", "--skip-inbound-ports", "", "--skip-outbound-ports", "",
		"--skip-outbound-cidrs", "", "--dry-run"}, &out); err != nil {
		t.Errorf("empty lists: %v", err)
	}
}

func TestInitRejectsBadFlags(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"no uid":      {[]string{"--dry-run"}, "--proxy-uid is required"},
		"bad port":    {[]string{"--proxy-uid", "1", "--skip-outbound-ports", "25,smtp"}, `--skip-outbound-ports: "smtp" is not a port`},
		"bad cidr":    {[]string{"--proxy-uid", "1", "--skip-outbound-cidrs", "10.0.0.0/40"}, "--skip-outbound-cidrs"},
		"host bits":   {[]string{"--proxy-uid", "1", "--skip-outbound-cidrs", "10.1.0.0/8"}, "did you mean 10.0.0.0/8"},
		"port range":  {[]string{"--proxy-uid", "1", "--inbound-port", "70000"}, "--inbound-port 70000 is not a port"},
		"extra words": {[]string{"--proxy-uid", "1", "now"}, "braid-init takes no arguments"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := run(append(c.args, "--dry-run"), &strings.Builder{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}
