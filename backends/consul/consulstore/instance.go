package consulstore

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/registry"
)

// instanceName names an instance in logs: <node>/<service ID>.
func instanceName(entry *api.ServiceEntry) string {
	node := ""
	if entry.Node != nil {
		node = entry.Node.Node
	}
	id := ""
	if entry.Service != nil {
		id = entry.Service.ID
	}
	return node + "/" + id
}

// weightMeta is the service metadata key whose value, 0 to 100, is an
// instance's weight instead of Service.Weights.Passing, which Consul
// keeps at 1 or more: 0 drains the instance (registered, sent nothing).
const weightMeta = "weight"

// instance reads the versions and the endpoint of a Consul instance, or
// says why it is skipped.
func (c *Store) instance(entry *api.ServiceEntry) ([]string, registry.Endpoint, error) {
	svc := entry.Service
	if svc == nil {
		return nil, registry.Endpoint{}, errors.New("no service in the answer")
	}
	host := svc.Address
	if host == "" && entry.Node != nil {
		host = entry.Node.Address
	}
	addr, err := registry.ParseAddress(net.JoinHostPort(host, strconv.Itoa(svc.Port)))
	if err != nil {
		return nil, registry.Endpoint{}, err
	}
	var versions []string
	if v := svc.Meta[c.opts.VersionMeta]; c.opts.VersionMeta != "" && v != "" {
		versions = []string{v}
	} else {
		for _, tag := range svc.Tags {
			if v, ok := strings.CutPrefix(tag, c.opts.VersionTag); ok && !slices.Contains(versions, v) {
				versions = append(versions, v)
			}
		}
	}
	if len(versions) == 0 {
		why := fmt.Sprintf("no version: want a tag %s<version>", c.opts.VersionTag)
		if c.opts.VersionMeta != "" {
			why += fmt.Sprintf(" or service metadata %s", c.opts.VersionMeta)
		}
		return nil, registry.Endpoint{}, errors.New(why)
	}
	for _, v := range versions {
		if err := registry.CheckName("version", v); err != nil {
			return nil, registry.Endpoint{}, err
		}
	}
	weight := registry.Weight(min(max(svc.Weights.Passing, 1), registry.MaxWeight))
	if m, ok := svc.Meta[weightMeta]; ok {
		// Consul's weights cannot be 0: the metadata can drain
		n, err := strconv.Atoi(m)
		if err != nil || n < 0 || n > registry.MaxWeight {
			return nil, registry.Endpoint{}, fmt.Errorf("service metadata %s=%q: want a whole number from 0 (drained) to %d", weightMeta, m, registry.MaxWeight)
		}
		weight = registry.WeightOf(n)
	}
	return versions, registry.Endpoint{Address: addr, Weight: weight}, nil
}
