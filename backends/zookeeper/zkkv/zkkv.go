// Package zkkv is the node layout of the svcreg ZooKeeper registry, for
// the zookeeper backend and for services that register themselves: what
// one writes, the other reads. It imports nothing of Caddy.
//
// By default it is the layout of Apache Curator's service discovery
// (curator-x-discovery), so that JVM services registered through Curator
// are routed with no change: one node per instance,
// <base>/<service>/<instance-id>, whose data is Curator's JSON:
//
//	{"name":"users","id":"...","address":"127.0.0.1","port":9091,"sslPort":null,
//	 "payload":{"version":"v1","weight":2},"registrationTimeUTC":1700000000000,
//	 "serviceType":"DYNAMIC","uriSpec":null}
//
// The version is a field of the payload ("version" unless configured),
// or, with VersionLevel, a level of the path: <base>/<service>/<version>/<id>.
// The weight is the payload's "weight" field, if any (0 drains the
// instance: registered, sent no new request).
package zkkv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
)

// Defaults of a Layout.
const (
	DefaultBase         = "/services"
	DefaultVersionField = "version"
	DefaultWeightField  = "weight"
)

// Layout says where instances are and how to read their version.
type Layout struct {
	// Base is the parent of the service nodes. Default: /services.
	Base string
	// VersionField is the payload field that holds the version, when
	// VersionLevel is false. Default: version.
	VersionField string
	// VersionLevel puts the version in the path, as a level between the
	// service and the instance.
	VersionLevel bool
	// WeightField is the payload field that holds the weight (1 to 100),
	// if any. Default: weight.
	WeightField string
}

// Normalize fills in the defaults and checks the layout.
func (l Layout) Normalize() (Layout, error) {
	if l.Base == "" {
		l.Base = DefaultBase
	}
	if !strings.HasPrefix(l.Base, "/") {
		return l, registry.Invalidf("base path %q must start with /", l.Base)
	}
	if l.Base != "/" {
		l.Base = strings.TrimSuffix(l.Base, "/")
	}
	if path.Clean(l.Base) != l.Base {
		return l, registry.Invalidf("base path %q is not clean", l.Base)
	}
	if l.VersionField == "" {
		l.VersionField = DefaultVersionField
	}
	if l.WeightField == "" {
		l.WeightField = DefaultWeightField
	}
	return l, nil
}

// Depth is how many levels below Base an instance node is: 2, or 3 with
// VersionLevel.
func (l Layout) Depth() int {
	if l.VersionLevel {
		return 3
	}
	return 2
}

// join joins the base with names.
func (l Layout) join(names ...string) string {
	p := l.Base
	if p == "/" {
		p = ""
	}
	for _, n := range names {
		p += "/" + n
	}
	return p
}

// ServicePath returns the node of a service.
func (l Layout) ServicePath(service string) string { return l.join(service) }

// Dir returns the node under which key's instances are.
func (l Layout) Dir(key registry.ServiceKey) string {
	if l.VersionLevel {
		return l.join(key.Service, key.Version)
	}
	return l.join(key.Service)
}

// InstanceID returns the instance ID svcreg gives an endpoint of key: the
// version (unless it is a path level) and the canonical address, which a
// node name may hold. Curator's own IDs are UUIDs; both are read.
func (l Layout) InstanceID(key registry.ServiceKey, address string) string {
	if l.VersionLevel {
		return address
	}
	return key.Version + "@" + address
}

// Instance is Curator's ServiceInstance as JSON.
type Instance struct {
	Name                string          `json:"name"`
	ID                  string          `json:"id"`
	Address             string          `json:"address"`
	Port                *int            `json:"port"`
	SSLPort             *int            `json:"sslPort"`
	Payload             json.RawMessage `json:"payload"`
	RegistrationTimeUTC int64           `json:"registrationTimeUTC"`
	ServiceType         string          `json:"serviceType"`
	URISpec             any             `json:"uriSpec"`
}

// Encode validates and normalizes ep of key and returns its node path and
// data. ephemeral says whether the node lives as long as its session
// (Curator's DYNAMIC) or stays (STATIC).
func (l Layout) Encode(key registry.ServiceKey, ep registry.Endpoint, ephemeral bool, now time.Time) (string, []byte, error) {
	if err := key.Validate(); err != nil {
		return "", nil, err
	}
	ep, err := ep.Normalize()
	if err != nil {
		return "", nil, err
	}
	host, portText, err := net.SplitHostPort(ep.Address)
	if err != nil {
		return "", nil, err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return "", nil, err
	}
	payload := map[string]any{}
	if !l.VersionLevel {
		payload[l.VersionField] = key.Version
	}
	if ep.Weight != 1 {
		payload[l.WeightField] = ep.Weight.Int() // 0 when drained
	}
	for k, v := range ep.Metadata {
		if _, taken := payload[k]; !taken {
			payload[k] = v
		}
	}
	raw, err := json.Marshal(payload)
	if err != nil {
		return "", nil, err
	}
	id := l.InstanceID(key, ep.Address)
	kind := "STATIC"
	if ephemeral {
		kind = "DYNAMIC"
	}
	data, err := json.Marshal(Instance{
		Name: key.Service, ID: id, Address: host, Port: &port, Payload: raw,
		RegistrationTimeUTC: now.UnixMilli(), ServiceType: kind,
	})
	if err != nil {
		return "", nil, err
	}
	return l.Dir(key) + "/" + id, data, nil
}

// ErrNotInstance means a node is not an instance node of the layout.
var ErrNotInstance = errors.New("not an instance node: want <base>/<service>/<id> (or <base>/<service>/<version>/<id>)")

// Decode reads an instance node: its service and version (from the path
// and the payload) and its endpoint, normalized.
func (l Layout) Decode(nodePath string, data []byte) (registry.ServiceKey, registry.Endpoint, error) {
	var key registry.ServiceKey
	rest, ok := strings.CutPrefix(nodePath, l.join()+"/")
	if !ok {
		return key, registry.Endpoint{}, ErrNotInstance
	}
	parts := strings.Split(rest, "/")
	if len(parts) != l.Depth() {
		return key, registry.Endpoint{}, ErrNotInstance
	}
	key.Service = parts[0]
	if l.VersionLevel {
		key.Version = parts[1]
	}
	var inst Instance
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&inst); err != nil {
		return key, registry.Endpoint{}, fmt.Errorf("instance JSON: %w", err)
	}
	var payload map[string]any
	if len(inst.Payload) > 0 && string(inst.Payload) != "null" {
		d := json.NewDecoder(bytes.NewReader(inst.Payload))
		d.UseNumber()
		if err := d.Decode(&payload); err != nil {
			return key, registry.Endpoint{}, fmt.Errorf("instance payload: want a JSON object: %w", err)
		}
	}
	if !l.VersionLevel {
		v, _ := payload[l.VersionField].(string)
		if v == "" {
			return key, registry.Endpoint{}, fmt.Errorf("instance payload has no %q string field", l.VersionField)
		}
		key.Version = v
	}
	if err := key.Validate(); err != nil {
		return key, registry.Endpoint{}, err
	}
	port := inst.Port
	if port == nil {
		port = inst.SSLPort
	}
	if inst.Address == "" || port == nil {
		return key, registry.Endpoint{}, errors.New("instance has no address or port")
	}
	ep := registry.Endpoint{Address: net.JoinHostPort(inst.Address, strconv.Itoa(*port)), Weight: 1}
	if w, ok := payload[l.WeightField].(json.Number); ok {
		n, err := strconv.Atoi(w.String())
		if err != nil || n < 0 {
			return key, registry.Endpoint{}, fmt.Errorf("instance weight %s: want a whole number from 0 (drained) to 100", w)
		}
		ep.Weight = registry.WeightOf(n)
	}
	for k, v := range payload {
		if s, ok := v.(string); ok && k != l.VersionField && !strings.HasPrefix(k, "@") {
			if ep.Metadata == nil {
				ep.Metadata = map[string]string{}
			}
			ep.Metadata[k] = s
		}
	}
	ep, err := ep.Normalize()
	if err != nil {
		return key, registry.Endpoint{}, err
	}
	return key, ep, nil
}
