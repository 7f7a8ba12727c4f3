package svcreg

import "github.com/svcreg/caddy-svcreg/registry"

// A Caddy placeholder holds an `any`: a string stored there on every
// request would be boxed, an allocation, each time. The strings the
// matcher and the selection policy store are boxed once instead, per
// service version and per traffic policy, and kept with them (a
// serviceState, attached to the version while it stays registered;
// registry.Traffic.Attach, whose Traffic never changes: a change of a
// policy brings a new one).

// serviceBoxes are a service version's strings, boxed.
type serviceBoxes struct {
	name, version, prefix any
	unavailable           any // the text of Service.Unavailable
}

// trafficBoxes are a traffic policy's prefixes, boxed.
type trafficBoxes struct {
	splitPrefix any // "/<service>": the prefix of a request whose version the policy chose
	aliases     []aliasBox
}

// aliasBox is an alias of a policy, and its prefix, "/<service>/<alias>",
// boxed.
type aliasBox struct {
	name, version string
	prefix        any
}

// trafficBoxesOf returns t's boxed prefixes, made by its first request.
func trafficBoxesOf(t *registry.Traffic) *trafficBoxes {
	if b, ok := t.Attachment().(*trafficBoxes); ok {
		return b
	}
	service := t.Service()
	b := &trafficBoxes{splitPrefix: "/" + service}
	for name, version := range t.Policy().Aliases {
		b.aliases = append(b.aliases, aliasBox{name: name, version: version, prefix: "/" + service + "/" + name})
	}
	return t.Attach(b).(*trafficBoxes)
}

// aliasOf returns the version an alias names and the alias's prefix, or
// "" and nil when it names none. A policy has few aliases: comparing them
// costs less than hashing.
func (b *trafficBoxes) aliasOf(name string) (version string, prefix any) {
	for i := range b.aliases {
		if a := &b.aliases[i]; a.name == name {
			return a.version, a.prefix
		}
	}
	return "", nil
}

// boxedSources are the values of {svc.version_from}, by registry.Source.
var boxedSources = [...]any{
	registry.FromPath:     registry.FromPath.String(),
	registry.FromAlias:    registry.FromAlias.String(),
	registry.FromHeader:   registry.FromHeader.String(),
	registry.FromCookie:   registry.FromCookie.String(),
	registry.FromSticky:   registry.FromSticky.String(),
	registry.FromSplit:    registry.FromSplit.String(),
	registry.FromFallback: registry.FromFallback.String(),
}

// boxedSource returns s.String() boxed.
func boxedSource(s registry.Source) any {
	if int(s) < len(boxedSources) {
		return boxedSources[s]
	}
	return s.String()
}
