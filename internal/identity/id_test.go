package identity_test

import (
	"strings"
	"testing"

	"github.com/braidmesh/braid/internal/identity"
)

func TestIDRoundTrip(t *testing.T) {
	cases := []struct {
		uri string
		id  identity.ID
	}{
		{"spiffe://cluster.local/ns/shop/sa/web", identity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}},
		{"spiffe://td/ns/a/sa/b", identity.ID{TrustDomain: "td", Namespace: "a", ServiceAccount: "b"}},
		{"spiffe://prod-1.example.com/ns/kube-system/sa/build.robot-2", identity.ID{TrustDomain: "prod-1.example.com", Namespace: "kube-system", ServiceAccount: "build.robot-2"}},
		{"spiffe://cluster.local/ns/0/sa/9", identity.ID{TrustDomain: "cluster.local", Namespace: "0", ServiceAccount: "9"}},
		{"spiffe://cluster.local/ns/" + strings.Repeat("n", 63) + "/sa/" + longSubdomain(), identity.ID{TrustDomain: "cluster.local", Namespace: strings.Repeat("n", 63), ServiceAccount: longSubdomain()}},
	}
	for _, tc := range cases {
		t.Run(tc.uri, func(t *testing.T) {
			got, err := identity.ParseID(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.id {
				t.Fatalf("ParseID = %+v, want %+v", got, tc.id)
			}
			if s := got.String(); s != tc.uri {
				t.Fatalf("String() = %q, want %q", s, tc.uri)
			}
			u := got.URI()
			if u.Scheme != "spiffe" || u.Host != tc.id.TrustDomain || u.Path != "/ns/"+tc.id.Namespace+"/sa/"+tc.id.ServiceAccount || u.String() != tc.uri {
				t.Fatalf("URI() = %#v", u)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

// longSubdomain is a DNS subdomain of exactly 253 characters.
func longSubdomain() string {
	l := strings.Repeat("s", 63)
	return l + "." + l + "." + l + "." + strings.Repeat("s", 61)
}

func TestParseIDRejects(t *testing.T) {
	cases := []struct {
		name, uri string
		mention   string // what the error must name
	}{
		{"empty", "", "scheme"},
		{"other scheme", "https://cluster.local/ns/shop/sa/web", "scheme"},
		{"uppercase scheme", "SPIFFE://cluster.local/ns/shop/sa/web", "scheme"},
		{"no slashes after scheme", "spiffe:cluster.local/ns/shop/sa/web", "scheme"},
		{"trust domain only", "spiffe://cluster.local", "path"},
		{"trust domain and slash", "spiffe://cluster.local/", "path"},
		{"extra path segment", "spiffe://cluster.local/ns/shop/sa/web/x", "path"},
		{"trailing slash", "spiffe://cluster.local/ns/shop/sa/web/", "path"},
		{"leading extra segment", "spiffe://cluster.local/x/ns/shop/sa/web", "path"},
		{"double slash", "spiffe://cluster.local//ns/shop/sa/web", "path"},
		{"missing sa", "spiffe://cluster.local/ns/shop", "path"},
		{"missing sa name", "spiffe://cluster.local/ns/shop/sa", "path"},
		{"segments swapped", "spiffe://cluster.local/sa/web/ns/shop", "path"},
		{"uppercase segment keyword", "spiffe://cluster.local/NS/shop/sa/web", "path"},
		{"empty trust domain", "spiffe:///ns/shop/sa/web", "trust domain"},
		{"empty namespace", "spiffe://cluster.local/ns//sa/web", "namespace"},
		{"empty service account", "spiffe://cluster.local/ns/shop/sa/", "service account"},
		{"uppercase trust domain", "spiffe://Cluster.Local/ns/shop/sa/web", "trust domain"},
		{"trust domain with trailing dot", "spiffe://cluster.local./ns/shop/sa/web", "trust domain"},
		{"trust domain with underscore", "spiffe://my_domain/ns/shop/sa/web", "trust domain"},
		{"trust domain label starting with dash", "spiffe://-cluster.local/ns/shop/sa/web", "trust domain"},
		{"trust domain an IP address", "spiffe://10.0.0.1/ns/shop/sa/web", "IP address"},
		{"trust domain too long", "spiffe://" + longSubdomain() + "x/ns/shop/sa/web", "trust domain"},
		{"query", "spiffe://cluster.local/ns/shop/sa/web?x=1", "query"},
		{"empty query", "spiffe://cluster.local/ns/shop/sa/web?", "query"},
		{"fragment", "spiffe://cluster.local/ns/shop/sa/web#frag", "fragment"},
		{"port", "spiffe://cluster.local:8443/ns/shop/sa/web", "port"},
		{"userinfo", "spiffe://user@cluster.local/ns/shop/sa/web", "user info"},
		{"percent encoding", "spiffe://cluster.local/ns/sh%6Fp/sa/web", "percent"},
		{"uppercase namespace", "spiffe://cluster.local/ns/Shop/sa/web", "namespace"},
		{"namespace with a dot", "spiffe://cluster.local/ns/my.shop/sa/web", "namespace"},
		{"namespace starting with dash", "spiffe://cluster.local/ns/-shop/sa/web", "namespace"},
		{"namespace ending with dash", "spiffe://cluster.local/ns/shop-/sa/web", "namespace"},
		{"namespace with underscore", "spiffe://cluster.local/ns/my_shop/sa/web", "namespace"},
		{"namespace too long", "spiffe://cluster.local/ns/" + strings.Repeat("n", 64) + "/sa/web", "namespace"},
		{"service account uppercase", "spiffe://cluster.local/ns/shop/sa/Web", "service account"},
		{"service account empty label", "spiffe://cluster.local/ns/shop/sa/web..x", "service account"},
		{"service account too long", "spiffe://cluster.local/ns/shop/sa/" + longSubdomain() + "x", "service account"},
		{"space", "spiffe://cluster.local/ns/shop/sa/we b", "service account"},
		{"colon in the path", "spiffe://cluster.local/ns/shop/sa/web:1", "service account"},
		{"at sign in the path", "spiffe://cluster.local/ns/shop/sa/web@x", "service account"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := identity.ParseID(tc.uri)
			if err == nil {
				t.Fatalf("ParseID(%q) = %+v, want an error", tc.uri, id)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
			if id != (identity.ID{}) {
				t.Errorf("ParseID returned %+v with its error, want the zero ID", id)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		id   identity.ID
		ok   bool
	}{
		{"valid", web, true},
		{"zero", identity.ID{}, false},
		{"slash in namespace", identity.ID{TrustDomain: td, Namespace: "a/b", ServiceAccount: "web"}, false},
		{"slash in service account", identity.ID{TrustDomain: td, Namespace: "shop", ServiceAccount: "a/sa/b"}, false},
		{"port in trust domain", identity.ID{TrustDomain: td + ":1", Namespace: "shop", ServiceAccount: "web"}, false},
		{"dot in namespace", identity.ID{TrustDomain: td, Namespace: "a.b", ServiceAccount: "web"}, false},
		{"dot in service account", identity.ID{TrustDomain: td, Namespace: "shop", ServiceAccount: "a.b"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.id.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate(%+v) = %v, want ok=%t", tc.id, err, tc.ok)
			}
		})
	}
}
