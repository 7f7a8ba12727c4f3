package registry

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// ParseAddress checks that s is host:port with a port from 1 to 65535 and
// returns its canonical form: an IP literal in its shortest form (IPv4 for
// an IPv4-mapped IPv6 address), a host name in lower case, the port
// without leading zeros. An http:// prefix is dropped; https:// is refused,
// because TLS to upstreams is a setting of the proxy's transport (in
// Caddy, transport http { tls }), not of an address.
func ParseAddress(s string) (string, error) {
	raw := s
	if i := strings.Index(s, "://"); i >= 0 {
		switch strings.ToLower(s[:i]) {
		case "http":
			s = s[i+3:]
		case "https":
			return "", Invalidf("invalid address %q: register host:port and enable TLS with `transport http { tls }`", raw)
		default:
			return "", Invalidf("invalid address %q: unsupported scheme %q", raw, s[:i])
		}
	}
	if strings.ContainsAny(s, "/?#@ \t\r\n") {
		return "", Invalidf("invalid address %q: want host:port", raw)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", Invalidf("invalid address %q: want host:port", raw)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return "", Invalidf("invalid address %q: port must be a number from 1 to 65535", raw)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", Invalidf("invalid address %q: IPv6 zones are not supported", raw)
		}
		return net.JoinHostPort(ip.Unmap().String(), strconv.Itoa(p)), nil
	}
	if !validHostname(host) {
		return "", Invalidf("invalid address %q: bad host name %q", raw, host)
	}
	if last := host[strings.LastIndexByte(host, '.')+1:]; strings.TrimLeft(last, "0123456789") == "" {
		// A DNS name's last label is never all digits (RFC 3696, 2):
		// this is a mistyped IP address, which a resolver might still
		// take for one.
		return "", Invalidf("invalid address %q: %q is not an IP address, nor a host name (its last label is a number)", raw, host)
	}
	return net.JoinHostPort(strings.ToLower(host), strconv.Itoa(p)), nil
}

// validHostname reports whether h is a DNS host name (underscores allowed).
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
