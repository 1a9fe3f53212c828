// Package netinit programs a pod's network namespace so that its TCP traffic goes through
// the proxy: braid-init. It writes one nftables table, inet braid, with two NAT
// chains. prerouting redirects inbound TCP to the proxy's inbound port; output redirects
// the pod's outbound TCP to the proxy's outbound port, except the proxy's own traffic.
// Building the rules is a pure function of Options (Rules); Apply writes them.
package netinit

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) that braid-init owns: it deletes and
// recreates it whole, and touches nothing else.
const TableName = "braid"

// The chains of the table.
const (
	ChainPrerouting = "prerouting"
	ChainOutput     = "output"
)

// AdminPort is the proxy's admin port, never redirected inbound (kubelet probes and
// Prometheus reach it directly).
const AdminPort = 15000

// Options say what to redirect where.
type Options struct {
	// ProxyUID is the user the proxy runs as: its own connections are never redirected.
	ProxyUID uint32
	// InboundPort and OutboundPort are the proxy's listeners that redirected inbound and
	// outbound connections go to.
	InboundPort, OutboundPort uint16
	// SkipInboundPorts are destination ports of inbound connections left alone, besides
	// AdminPort and InboundPort, which are always.
	SkipInboundPorts []uint16
	// SkipOutboundPorts are destination ports of outbound connections left alone.
	SkipOutboundPorts []uint16
	// SkipOutboundCIDRs are destination networks of outbound connections left alone.
	SkipOutboundCIDRs []netip.Prefix
}

// Rule is one rule of a chain: its nft syntax, for humans, and its expressions, for the
// kernel.
type Rule struct {
	Chain string
	Text  string
	Exprs []expr.Any
}

// Validate says what is wrong with the options, if anything.
func (o *Options) Validate() error {
	var errs []error
	if o.ProxyUID == 0 {
		errs = append(errs, errors.New("--proxy-uid is required and must not be 0: every process of that user bypasses the proxy, and the proxy must not run as root"))
	}
	if o.InboundPort == 0 {
		errs = append(errs, errors.New("--inbound-port is required (1-65535)"))
	}
	if o.OutboundPort == 0 {
		errs = append(errs, errors.New("--outbound-port is required (1-65535)"))
	}
	if o.InboundPort != 0 && o.InboundPort == o.OutboundPort {
		errs = append(errs, fmt.Errorf("--inbound-port and --outbound-port are both %d: they must differ", o.InboundPort))
	}
	if slices.Contains(o.SkipOutboundPorts, 0) || slices.Contains(o.SkipInboundPorts, 0) {
		errs = append(errs, errors.New("port 0 cannot be skipped: ports are 1-65535"))
	}
	for _, p := range o.SkipOutboundCIDRs {
		if !p.IsValid() {
			errs = append(errs, errors.New("--skip-outbound-cidrs holds an invalid network"))
		} else if p.Masked() != p {
			errs = append(errs, fmt.Errorf("--skip-outbound-cidrs: %s has host bits set (did you mean %s?)", p, p.Masked()))
		}
	}
	return errors.Join(errs...)
}

// Rules validates the options and returns the rules of both chains, in order: prerouting
// first, then output.
func Rules(o Options) ([]Rule, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var rules []Rule
	add := func(chain, text string, exprs ...expr.Any) {
		rules = append(rules, Rule{Chain: chain, Text: text, Exprs: exprs})
	}

	// Inbound: what arrives on loopback was sent from inside the pod (the proxy's own
	// forwarding to the application included), never from a peer.
	add(ChainPrerouting, `iifname "lo" return`, loadMeta(expr.MetaKeyIIFNAME), eq(ifname("lo")), ret())
	for _, port := range sortedPorts(append([]uint16{AdminPort, o.InboundPort}, o.SkipInboundPorts...)) {
		add(ChainPrerouting, fmt.Sprintf("tcp dport %d return", port), tcpDport(port, ret())...)
	}
	add(ChainPrerouting, fmt.Sprintf("meta l4proto tcp redirect to :%d", o.InboundPort), redirect(o.InboundPort)...)

	// Outbound.
	add(ChainOutput, fmt.Sprintf("meta skuid %d return", o.ProxyUID), loadMeta(expr.MetaKeySKUID), eq(binaryutil.NativeEndian.PutUint32(o.ProxyUID)), ret())
	for _, p := range []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")} {
		add(ChainOutput, daddrText(p)+" return", daddr(p, ret())...)
	}
	// The pod's own addresses: an application calling itself by its pod IP reaches itself
	// (through loopback, which prerouting leaves alone) rather than the proxy.
	add(ChainOutput, "fib daddr type local return",
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}, eq(binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)), ret())
	for _, port := range sortedPorts(o.SkipOutboundPorts) {
		add(ChainOutput, fmt.Sprintf("tcp dport %d return", port), tcpDport(port, ret())...)
	}
	for _, p := range sortedPrefixes(o.SkipOutboundCIDRs) {
		add(ChainOutput, daddrText(p)+" return", daddr(p, ret())...)
	}
	add(ChainOutput, fmt.Sprintf("meta l4proto tcp redirect to :%d", o.OutboundPort), redirect(o.OutboundPort)...)
	return rules, nil
}

// Format writes the table as nft would list it: what --dry-run prints.
func Format(rules []Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for i, chain := range []string{ChainPrerouting, ChainOutput} {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook %s priority dstnat; policy accept;\n", chain, chain)
		for _, r := range rules {
			if r.Chain == chain {
				fmt.Fprintf(&b, "\t\t%s\n", r.Text)
			}
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// ParsePorts parses a comma-separated list of ports; an empty string is an empty list.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port (1-65535)", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// ParseCIDRs parses a comma-separated list of networks (10.0.0.0/8, fd00::/8); an address
// without a length is one host. An empty string is an empty list.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			addr, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a network (10.0.0.0/8, fd00::/8) or an address", f)
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%q: give IPv4 networks in IPv4 form", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func sortedPorts(ports []uint16) []uint16 {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// Expression helpers. Every rule works in register 1.

func loadMeta(key expr.MetaKey) expr.Any { return &expr.Meta{Key: key, Register: 1} }

func eq(data []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }

func ret() expr.Any { return &expr.Verdict{Kind: expr.VerdictReturn} }

// ifname is an interface name as the kernel compares it: NUL-padded to IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// tcpDport matches TCP to a destination port, then does then.
func tcpDport(port uint16, then ...expr.Any) []expr.Any {
	return append([]expr.Any{
		loadMeta(expr.MetaKeyL4PROTO), eq([]byte{unix.IPPROTO_TCP}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		eq(binaryutil.BigEndian.PutUint16(port)),
	}, then...)
}

// daddr matches a destination network of its family (the table is inet: both), then does then.
func daddr(p netip.Prefix, then ...expr.Any) []expr.Any {
	family, offset := byte(unix.NFPROTO_IPV4), uint32(16) // the IPv4 header's destination
	if p.Addr().Is6() {
		family, offset = unix.NFPROTO_IPV6, 24
	}
	addr := p.Addr().AsSlice()
	out := []expr.Any{
		loadMeta(expr.MetaKeyNFPROTO), eq([]byte{family}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
	}
	if p.Bits() < len(addr)*8 {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)),
			Mask: maskBytes(p.Bits(), len(addr)), Xor: make([]byte, len(addr))})
	}
	return append(append(out, eq(addr)), then...)
}

func daddrText(p netip.Prefix) string {
	family, s := "ip", p.String()
	if p.Addr().Is6() {
		family = "ip6"
	}
	if p.IsSingleIP() {
		s = p.Addr().String()
	}
	return family + " daddr " + s
}

// maskBytes is a network mask of bits ones in size bytes.
func maskBytes(bits, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		switch {
		case bits >= 8:
			b[i] = 0xff
			bits -= 8
		case bits > 0:
			b[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return b
}

// redirect sends TCP to a local port.
func redirect(port uint16) []expr.Any {
	return []expr.Any{
		loadMeta(expr.MetaKeyL4PROTO), eq([]byte{unix.IPPROTO_TCP}),
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1, Flags: expr.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
}
