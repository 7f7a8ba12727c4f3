// Package etcdkv is the key/value layout of the svcreg etcd registry, for
// the etcd backend and for services that register themselves: what one
// writes, the other reads. It imports nothing of Caddy.
//
// One key per endpoint, <prefix><service>/<version>/<address> with the
// address in canonical host:port form (registry.ParseAddress), and a
// small JSON value such as {"weight":2,"metadata":{"zone":"a"}} (weight 0
// drains the endpoint: registered, sent no new request); an empty
// value or {} means the defaults. A service's traffic policy is the key
// <prefix>@traffic/<service>, its value the policy's JSON.
package etcdkv

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// DefaultPrefix is the key prefix of the registry unless configured.
const DefaultPrefix = "/svcreg/"

// Prefix returns prefix as keys use it: DefaultPrefix for "", and ending
// in a slash.
func Prefix(prefix string) string {
	if prefix == "" {
		return DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

// value is the JSON value of an endpoint key.
type value struct {
	Weight   registry.Weight   `json:"weight,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Key returns the key of the endpoint at address (canonical) of key,
// under prefix (as Prefix returns it).
func Key(prefix string, key registry.ServiceKey, address string) string {
	return prefix + key.Service + "/" + key.Version + "/" + address
}

// Encode validates and normalizes ep (registry.Endpoint.Normalize) of key
// and returns its key under prefix (as Prefix returns it) and its value.
// Its TTL is not part of either: it is the key's lease.
func Encode(prefix string, key registry.ServiceKey, ep registry.Endpoint) (k, v string, err error) {
	if err := key.Validate(); err != nil {
		return "", "", err
	}
	ep, err = ep.Normalize()
	if err != nil {
		return "", "", err
	}
	data, err := json.Marshal(value{Weight: ep.Weight, Metadata: ep.Metadata})
	if err != nil {
		return "", "", err
	}
	return Key(prefix, key, ep.Address), string(data), nil
}

// ParseKey splits a key under prefix into service version and address. It
// reports false for any other key, and for one whose address is not in
// canonical form.
func ParseKey(prefix, k string) (registry.ServiceKey, string, bool) {
	rest, ok := strings.CutPrefix(k, prefix)
	if !ok {
		return registry.ServiceKey{}, "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return registry.ServiceKey{}, "", false
	}
	key := registry.ServiceKey{Service: parts[0], Version: parts[1]}
	if key.Validate() != nil {
		return registry.ServiceKey{}, "", false
	}
	if addr, err := registry.ParseAddress(parts[2]); err != nil || addr != parts[2] {
		return registry.ServiceKey{}, "", false
	}
	return key, parts[2], true
}

// Errors of Decode, which say why a key is skipped.
var (
	ErrNotEndpointKey = errors.New("not <prefix><service>/<version>/<host:port> with a canonical address")
	ErrBadValue       = errors.New(`value is not a JSON object like {"weight":1}`)
)

// Decode reads the key and value of one endpoint under prefix.
func Decode(prefix string, k, v []byte) (registry.ServiceKey, registry.Endpoint, error) {
	key, addr, ok := ParseKey(prefix, string(k))
	if !ok {
		return registry.ServiceKey{}, registry.Endpoint{}, ErrNotEndpointKey
	}
	var val value
	if len(strings.TrimSpace(string(v))) > 0 {
		if err := json.Unmarshal(v, &val); err != nil {
			if errors.Is(err, registry.ErrInvalid) { // a weight out of range
				return registry.ServiceKey{}, registry.Endpoint{}, err
			}
			return registry.ServiceKey{}, registry.Endpoint{}, ErrBadValue
		}
	}
	ep, err := registry.Endpoint{Address: addr, Weight: val.Weight, Metadata: val.Metadata}.Normalize()
	if err != nil {
		return registry.ServiceKey{}, registry.Endpoint{}, err
	}
	return key, ep, nil
}

// trafficDir is the part of a traffic policy's key after the prefix: `@`
// is not a name character, so it never collides with an endpoint key.
const trafficDir = "@traffic/"

// TrafficKey returns the key of a service's traffic policy under prefix:
// <prefix>@traffic/<service>. Its value is the policy's JSON, as the admin
// API takes it.
func TrafficKey(prefix, service string) string { return prefix + trafficDir + service }

// ParseTrafficKey returns the service a traffic policy's key names, and
// whether k is one.
func ParseTrafficKey(prefix, k string) (string, bool) {
	service, ok := strings.CutPrefix(k, prefix+trafficDir)
	return service, ok && registry.ValidName(service)
}

// EncodeTraffic checks a service's policy (not whether its versions exist)
// and returns its key and value.
func EncodeTraffic(prefix, service string, p traffic.Policy) (k, v string, err error) {
	if _, err := p.Compile(service, nil); err != nil {
		return "", "", err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return "", "", err
	}
	return TrafficKey(prefix, service), string(data), nil
}

// DecodeTraffic reads a traffic policy's key and value, strictly: an
// unknown field or a policy that does not compile is an error.
func DecodeTraffic(prefix string, k, v []byte) (string, traffic.Policy, error) {
	service, ok := ParseTrafficKey(prefix, string(k))
	if !ok {
		return "", traffic.Policy{}, errors.New("not a traffic policy key")
	}
	var p traffic.Policy
	dec := json.NewDecoder(strings.NewReader(string(v)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return "", traffic.Policy{}, fmt.Errorf("traffic policy: %w", err)
	}
	if _, err := p.Compile(service, nil); err != nil {
		return "", traffic.Policy{}, err
	}
	return service, p, nil
}
