package registry

import (
	"slices"
	"strings"

	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Routing is a service's traffic policy in one snapshot, with the split's
// versions resolved to their Service, so that a request the split or a
// sticky bucket sends looks no version up.
type Routing struct {
	*traffic.Rules
	split []*Service // split[i]: the Service of the split's i-th version, nil while it has none
}

// SplitService returns the Service of the split's i-th version
// (traffic.Choice.Index), or nil when the snapshot has none of that version.
func (r *Routing) SplitService(i int) *Service { return r.split[i] }

// newRouting resolves the split of rules over a service's versions.
func newRouting(rules *traffic.Rules, versions map[string]*Service) *Routing {
	split := rules.Split()
	r := &Routing{Rules: rules, split: make([]*Service, len(split))}
	for i, v := range split {
		r.split[i] = versions[v]
	}
	return r
}

// Traffic returns the rules of the service's traffic policy, or nil for
// none.
func (s *Snapshot) Traffic(service string) *traffic.Rules {
	if r := s.Versions(service).Routing(); r != nil {
		return r.Rules
	}
	return nil
}

// Policies returns the rules of every service's traffic policy, sorted
// by service.
func (s *Snapshot) Policies() []*traffic.Rules {
	var out []*traffic.Rules
	for _, e := range s.services {
		if e.routing != nil {
			out = append(out, e.routing.Rules)
		}
	}
	slices.SortFunc(out, func(a, b *traffic.Rules) int { return strings.Compare(a.Service(), b.Service()) })
	return out
}
