package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net/url"
)

// Reasons a CSR is refused, the Reason of a *CSRError.
const (
	reasonMalformed          = "Malformed"
	reasonBadSignature       = "BadSignature"
	reasonUnsupportedKey     = "UnsupportedKey"
	reasonWrongIdentity      = "WrongIdentity"
	reasonExtraSANs          = "ExtraSANs"
	reasonForbiddenExtension = "ForbiddenExtension"
	reasonSubjectNotAllowed  = "SubjectNotAllowed"
)

const (
	// maxCSRSize bounds the input parsed: an RSA 8192 CSR with its SPIFFE ID is about 2.3 kB.
	maxCSRSize = 16 << 10
	minRSABits = 2048
	// maxRSABits bounds the cost of verifying a CSR's signature.
	maxRSABits = 8192
)

// CSRError is why CheckCSR refused a certificate signing request. Reason is a stable
// UpperCamelCase code for callers to map (to a gRPC status, a metric label): Malformed,
// BadSignature, UnsupportedKey, WrongIdentity, ExtraSANs, ForbiddenExtension or
// SubjectNotAllowed. Msg says what is wrong for a human.
type CSRError struct{ Reason, Msg string }

// Error implements error.
func (e *CSRError) Error() string { return "certificate request refused (" + e.Reason + "): " + e.Msg }

func csrError(reason, format string, args ...any) error {
	return &CSRError{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// CheckCSR parses csrDER and checks that it may be signed for id. Refusals are *CSRError:
//   - Malformed: not a single DER certificate request (or larger than 16 KiB);
//   - UnsupportedKey: the public key is not ECDSA P-256 or P-384, Ed25519, or RSA of 2048
//     to 8192 bits;
//   - SubjectNotAllowed: the subject is not empty (a CN, or any other attribute);
//   - ForbiddenExtension: an extension other than subjectAltName is requested (such as
//     basic constraints CA:TRUE or key usage certSign), or subjectAltName twice;
//   - ExtraSANs: the subjectAltName holds anything but one URI (DNS names, IP or email
//     addresses, other name forms, a second URI);
//   - WrongIdentity: the URI is not exactly id.URI(), or there is none;
//   - BadSignature: the signature does not verify, or uses MD5 or SHA-1.
//
// The cheap checks come first, the signature last. An invalid id is an error of the caller,
// not a *CSRError.
func CheckCSR(csrDER []byte, id ID) (*x509.CertificateRequest, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("checking a certificate request: identity: %w", err)
	}
	if len(csrDER) > maxCSRSize {
		return nil, csrError(reasonMalformed, "%d bytes is more than the %d a certificate request may have", len(csrDER), maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, csrError(reasonMalformed, "not a DER certificate request: %v", err)
	}
	for _, check := range []func(*x509.CertificateRequest, ID) error{checkCSRKey, checkCSRSubject, checkCSRExtensions, checkCSRSignature} {
		if err := check(csr, id); err != nil {
			return nil, err
		}
	}
	return csr, nil
}

func checkCSRKey(csr *x509.CertificateRequest, _ ID) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return csrError(reasonUnsupportedKey, "ECDSA curve %s: want P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return csrError(reasonUnsupportedKey, "RSA key of %d bits: want %d to %d", bits, minRSABits, maxRSABits)
		}
	default:
		return csrError(reasonUnsupportedKey, "public key algorithm %v: want ECDSA P-256 or P-384, Ed25519 or RSA", csr.PublicKeyAlgorithm)
	}
	return nil
}

func checkCSRSubject(csr *x509.CertificateRequest, _ ID) error {
	if csr.Subject.CommonName != "" {
		return csrError(reasonSubjectNotAllowed, "the subject has common name %q: the subject must be empty, the identity is the URI SAN", csr.Subject.CommonName)
	}
	// An empty subject is an empty SEQUENCE; this also refuses empty RDNs and attributes
	// that pkix.Name does not keep.
	if !bytes.Equal(csr.RawSubject, []byte{0x30, 0x00}) {
		return csrError(reasonSubjectNotAllowed, "the subject is %q: it must be empty, the identity is the URI SAN", csr.Subject)
	}
	return nil
}

// checkCSRExtensions allows one requested extension, subjectAltName, and checks it holds
// exactly the URI of id. It reads the extension itself rather than csr.URIs and friends,
// which normalise the URI and skip name forms crypto/x509 does not model.
func checkCSRExtensions(csr *x509.CertificateRequest, id ID) error {
	var san []byte
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}):
			if san != nil {
				return csrError(reasonForbiddenExtension, "subjectAltName requested twice")
			}
			san = ext.Value
		case ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 19}):
			return csrError(reasonForbiddenExtension, "basic constraints requested: workload certificates are never CAs")
		case ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 15}):
			return csrError(reasonForbiddenExtension, "key usage requested: the issuer sets it")
		default:
			return csrError(reasonForbiddenExtension, "extension %v requested: only subjectAltName may be", ext.Id)
		}
	}
	if san == nil {
		return csrError(reasonWrongIdentity, "no subjectAltName: want the URI %s", id)
	}
	return checkSAN(san, id)
}

// checkSAN checks that the DER GeneralNames in san are exactly one URI, id's.
func checkSAN(san []byte, id ID) error {
	var names asn1.RawValue
	if rest, err := asn1.Unmarshal(san, &names); err != nil || len(rest) != 0 ||
		names.Class != asn1.ClassUniversal || names.Tag != asn1.TagSequence || !names.IsCompound {
		return csrError(reasonMalformed, "subjectAltName is not a DER sequence of names")
	}
	var uris []string
	var others []string
	for rest := names.Bytes; len(rest) > 0; {
		var name asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &name); err != nil || name.Class != asn1.ClassContextSpecific {
			return csrError(reasonMalformed, "subjectAltName holds something that is not a general name")
		}
		if name.Tag == 6 && !name.IsCompound { // uniformResourceIdentifier [6] IA5String
			uris = append(uris, string(name.Bytes))
			continue
		}
		others = append(others, generalNameKind(name.Tag))
	}
	want := id.String()
	switch {
	case len(others) != 0:
		return csrError(reasonExtraSANs, "subjectAltName holds %v besides the URI: only the URI %s is allowed", others, want)
	case len(uris) > 1:
		return csrError(reasonExtraSANs, "subjectAltName holds %d URIs %q: only the URI %s is allowed", len(uris), uris, want)
	case len(uris) == 0:
		return csrError(reasonWrongIdentity, "subjectAltName has no URI: want %s", want)
	case uris[0] != want:
		return csrError(reasonWrongIdentity, "URI SAN %q is not %s", uris[0], want)
	}
	return nil
}

func generalNameKind(tag int) string {
	kinds := [...]string{"an otherName", "an email address", "a DNS name", "an x400Address", "a directoryName", "an ediPartyName", "a URI", "an IP address", "a registeredID"}
	if tag >= 0 && tag < len(kinds) {
		return kinds[tag]
	}
	return fmt.Sprintf("a name of tag %d", tag)
}

func checkCSRSignature(csr *x509.CertificateRequest, _ ID) error {
	switch csr.SignatureAlgorithm {
	case x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512, x509.PureEd25519,
		x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
		x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS:
	default:
		return csrError(reasonBadSignature, "signature algorithm %v is not allowed", csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return csrError(reasonBadSignature, "the signature does not verify with the request's key: %v", err)
	}
	return nil
}

// NewCSR generates a fresh ECDSA P-256 key and a certificate request for id signed with
// it, as proxies ask for their certificates: an empty subject and the one URI SAN id.URI().
func NewCSR(id ID) (csrDER []byte, key crypto.Signer, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("creating a certificate request: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("creating a certificate request for %s: generating key: %w", id, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}}, k)
	if err != nil {
		return nil, nil, fmt.Errorf("creating a certificate request for %s: %w", id, err)
	}
	return der, k, nil
}
