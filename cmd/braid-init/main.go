// Command braid-init is the meshed pod's init container: it redirects the pod's TCP to
// its proxy with nftables, or with --dry-run prints the rules it would write.
//
//	braid-init --proxy-uid UID [flags]
//
// It is its own binary, shipped in the braid-proxy image beside the proxy, so that the
// long-running sidecar carries no netlink or nftables code (0.4 MB of its loaded binary,
// 0.3 MB of resident memory measured in every pod) and the one program that runs as root
// with NET_ADMIN is small.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/braidmesh/braid/proxy/netinit"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "braid-init:", err)
		os.Exit(1)
	}
}

// run redirects the pod's TCP to the proxy as args say, or prints the rules.
func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("braid-init", flag.ContinueOnError)
	var (
		o                          netinit.Options
		uid, inbound, outbound     uint
		skipIn, skipOut, skipCIDRs string
		dryRun                     bool
	)
	fs.UintVar(&uid, "proxy-uid", 0, "user the proxy runs as: its connections are never redirected (required)")
	fs.UintVar(&inbound, "inbound-port", 15006, "port of the proxy's inbound listener, where inbound TCP is redirected")
	fs.UintVar(&outbound, "outbound-port", 15001, "port of the proxy's outbound listener, where outbound TCP is redirected")
	fs.StringVar(&skipIn, "skip-inbound-ports", "", "comma-separated inbound destination ports not redirected ("+
		strconv.Itoa(netinit.AdminPort)+" and --inbound-port never are)")
	fs.StringVar(&skipOut, "skip-outbound-ports", "", "comma-separated outbound destination ports not redirected")
	fs.StringVar(&skipCIDRs, "skip-outbound-cidrs", "", "comma-separated outbound destination networks not redirected (10.0.0.0/8,fd00::/8)")
	fs.BoolVar(&dryRun, "dry-run", false, "print the rules instead of writing them")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return fmt.Errorf("parsing the command line: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("braid-init takes no arguments, got %q", fs.Args())
	}
	var errs []error
	o.ProxyUID = uint32(min(uid, 1<<32-1))
	if uid > 1<<32-1 {
		errs = append(errs, fmt.Errorf("--proxy-uid %d is out of range", uid))
	}
	o.InboundPort, errs = port("--inbound-port", inbound, errs)
	o.OutboundPort, errs = port("--outbound-port", outbound, errs)
	var err error
	if o.SkipInboundPorts, err = netinit.ParsePorts(skipIn); err != nil {
		errs = append(errs, fmt.Errorf("--skip-inbound-ports: %w", err))
	}
	if o.SkipOutboundPorts, err = netinit.ParsePorts(skipOut); err != nil {
		errs = append(errs, fmt.Errorf("--skip-outbound-ports: %w", err))
	}
	if o.SkipOutboundCIDRs, err = netinit.ParseCIDRs(skipCIDRs); err != nil {
		errs = append(errs, fmt.Errorf("--skip-outbound-cidrs: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if dryRun {
		rules, err := netinit.Rules(o)
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, netinit.Format(rules))
		return err
	}
	if err := netinit.Apply(o); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "braid-init: TCP redirected: inbound to :%d, outbound to :%d (table inet %s)\n",
		o.InboundPort, o.OutboundPort, netinit.TableName)
	return err
}

func port(flagName string, v uint, errs []error) (uint16, []error) {
	if v < 1 || v > 65535 {
		return 0, append(errs, fmt.Errorf("%s %d is not a port (1-65535)", flagName, v))
	}
	return uint16(v), errs
}
