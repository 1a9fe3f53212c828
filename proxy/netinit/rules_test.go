package netinit

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

func example() Options {
	return Options{
		ProxyUID: 2102, InboundPort: 15006, OutboundPort: 15001,
		SkipInboundPorts:  []uint16{15000, 15006},
		SkipOutboundPorts: []uint16{3306, 25, 25},
		SkipOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("10.0.0.0/8")},
	}
}

func TestRules(t *testing.T) {
	rules, err := Rules(example())
	if err != nil {
		t.Fatal(err)
	}
	want := `table inet braid {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "lo" return
		tcp dport 15000 return
		tcp dport 15006 return
		meta l4proto tcp redirect to :15006
	}

	chain output {
		type nat hook output priority dstnat; policy accept;
		meta skuid 2102 return
		ip daddr 127.0.0.0/8 return
		ip6 daddr ::1 return
		fib daddr type local return
		tcp dport 25 return
		tcp dport 3306 return
		ip daddr 10.0.0.0/8 return
		ip6 daddr fd00::/8 return
		meta l4proto tcp redirect to :15001
	}
}
`
	if got := Format(rules); got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
}

// The admin port and the inbound port are never redirected inbound, even when the skip
// list forgets them; empty lists are fine.
func TestRulesAlwaysSkipAdminAndInboundPorts(t *testing.T) {
	rules, err := Rules(Options{ProxyUID: 7, InboundPort: 16006, OutboundPort: 16001})
	if err != nil {
		t.Fatal(err)
	}
	var pre []string
	for _, r := range rules {
		if r.Chain == ChainPrerouting {
			pre = append(pre, r.Text)
		}
	}
	want := []string{`iifname "lo" return`, "tcp dport 15000 return", "tcp dport 16006 return", "meta l4proto tcp redirect to :16006"}
	if !slices.Equal(pre, want) {
		t.Errorf("prerouting = %q, want %q", pre, want)
	}
}

// The expressions say what the text says: spot checks of each kind of rule.
func TestRuleExpressions(t *testing.T) {
	rules, err := Rules(example())
	if err != nil {
		t.Fatal(err)
	}
	byText := map[string][]expr.Any{}
	for _, r := range rules {
		byText[r.Chain+": "+r.Text] = r.Exprs
	}
	cases := map[string]struct {
		rule string
		// cmps are the data of the rule's comparisons, in order.
		cmps [][]byte
		mask []byte
	}{
		"proxy uid": {rule: "output: meta skuid 2102 return", cmps: [][]byte{nativeUint32(2102)}},
		"port":      {rule: "output: tcp dport 3306 return", cmps: [][]byte{{6}, {0x0c, 0xea}}},
		"ipv4 cidr": {rule: "output: ip daddr 10.0.0.0/8 return", cmps: [][]byte{{2}, {10, 0, 0, 0}}, mask: []byte{0xff, 0, 0, 0}},
		"ipv6 host": {rule: "output: ip6 daddr ::1 return", cmps: [][]byte{{10}, netip.IPv6Loopback().AsSlice()}},
		"ipv6 cidr": {rule: "output: ip6 daddr fd00::/8 return", cmps: [][]byte{{10}, netip.MustParseAddr("fd00::").AsSlice()},
			mask: append([]byte{0xff}, make([]byte, 15)...)},
		"loopback in": {rule: `prerouting: iifname "lo" return`, cmps: [][]byte{append([]byte("lo"), make([]byte, 14)...)}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			exprs, ok := byText[c.rule]
			if !ok {
				t.Fatalf("no rule %q", c.rule)
			}
			var cmps [][]byte
			var mask []byte
			for _, e := range exprs {
				switch e := e.(type) {
				case *expr.Cmp:
					cmps = append(cmps, e.Data)
				case *expr.Bitwise:
					mask = e.Mask
				}
			}
			if !slices.EqualFunc(cmps, c.cmps, bytes.Equal) || !bytes.Equal(mask, c.mask) {
				t.Errorf("comparisons %x mask %x, want %x mask %x", cmps, mask, c.cmps, c.mask)
			}
			if v, ok := exprs[len(exprs)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictReturn {
				t.Errorf("the rule ends with %#v, want return", exprs[len(exprs)-1])
			}
		})
	}
	redir := byText["output: meta l4proto tcp redirect to :15001"]
	if imm, ok := redir[2].(*expr.Immediate); !ok || !bytes.Equal(imm.Data, []byte{0x3a, 0x99}) {
		t.Errorf("the outbound redirect loads %#v, want port 15001", redir[2])
	}
}

func nativeUint32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestRulesRejectBadOptions(t *testing.T) {
	cases := map[string]struct {
		change func(*Options)
		want   string
	}{
		"no uid":          {func(o *Options) { o.ProxyUID = 0 }, "--proxy-uid is required"},
		"no inbound port": {func(o *Options) { o.InboundPort = 0 }, "--inbound-port is required"},
		"no outbound":     {func(o *Options) { o.OutboundPort = 0 }, "--outbound-port is required"},
		"same ports":      {func(o *Options) { o.OutboundPort = o.InboundPort }, "must differ"},
		"port 0":          {func(o *Options) { o.SkipOutboundPorts = []uint16{0} }, "port 0 cannot be skipped"},
		"host bits": {func(o *Options) { o.SkipOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")} },
			"10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			o := example()
			c.change(&o)
			if _, err := Rules(o); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}

func TestParseLists(t *testing.T) {
	ports, err := ParsePorts(" 25, 3306,")
	if err != nil || !slices.Equal(ports, []uint16{25, 3306}) {
		t.Errorf("ParsePorts = %v, %v", ports, err)
	}
	if ports, err := ParsePorts(""); err != nil || len(ports) != 0 {
		t.Errorf("ParsePorts(\"\") = %v, %v; want nothing", ports, err)
	}
	for _, bad := range []string{"0", "65536", "http", "25;3306"} {
		if _, err := ParsePorts(bad); err == nil || !strings.Contains(err.Error(), "is not a port") {
			t.Errorf("ParsePorts(%q) error %v, want one saying it is not a port", bad, err)
		}
	}
	cidrs, err := ParseCIDRs("10.0.0.0/8,fd00::/8, 192.0.2.7")
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.7/32")}
	if err != nil || !slices.Equal(cidrs, want) {
		t.Errorf("ParseCIDRs = %v, %v; want %v", cidrs, err, want)
	}
	if cidrs, err := ParseCIDRs(""); err != nil || len(cidrs) != 0 {
		t.Errorf("ParseCIDRs(\"\") = %v, %v; want nothing", cidrs, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "::ffff:10.0.0.0/104"} {
		if _, err := ParseCIDRs(bad); err == nil {
			t.Errorf("ParseCIDRs(%q) took it", bad)
		}
	}
}
