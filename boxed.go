package svcreg

import "github.com/svcreg/caddy-svcreg/registry/traffic"

// A Caddy placeholder holds an `any`: a string stored there on every
// request would be boxed, an allocation, each time. The strings the
// matcher and the selection policy store are boxed once instead, per
// service version and per traffic policy, and kept with them (a
// serviceState, attached to the version while it stays registered;
// traffic.Rules.Attach, whose Rules never change: a change of a policy
// brings new ones).

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
func trafficBoxesOf(t *traffic.Rules) *trafficBoxes {
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

// boxedSources are the values of {svc.version_from}, by traffic.Source.
var boxedSources = [...]any{
	traffic.FromPath:     traffic.FromPath.String(),
	traffic.FromAlias:    traffic.FromAlias.String(),
	traffic.FromHeader:   traffic.FromHeader.String(),
	traffic.FromCookie:   traffic.FromCookie.String(),
	traffic.FromSticky:   traffic.FromSticky.String(),
	traffic.FromSplit:    traffic.FromSplit.String(),
	traffic.FromFallback: traffic.FromFallback.String(),
}

// boxedSource returns s.String() boxed.
func boxedSource(s traffic.Source) any {
	if int(s) < len(boxedSources) {
		return boxedSources[s]
	}
	return s.String()
}
