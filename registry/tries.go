package registry

import (
	"time"

	"github.com/svcreg/caddy-svcreg/registry/balance"
)

// Tries are a request's tries over a Service's endpoints: a program that
// proxies or calls a service itself uses them to balance the request and
// fail over, never trying an endpoint twice.
//
//	tries := registry.NewTries(svc)
//	for ep := tries.Next(balance.RoundRobin); ep != nil; ep = tries.Next(balance.RoundRobin) {
//		ep.Sent()
//		if err := call(ep.Address); err == nil {
//			break
//		}
//		reg.Failure(svc.Key(), ep.Address)
//	}
type Tries struct {
	svc   *Service
	tried []bool
}

// NewTries starts a request's tries on svc.
func NewTries(svc *Service) *Tries {
	return &Tries{svc: svc, tried: make([]bool, len(svc.Endpoints))}
}

// Next picks the endpoint for the next try with a, and marks it tried: one
// in rotation if any is left untried, else (panic mode) any untried one
// not being removed. It returns nil once none is left.
func (t *Tries) Next(a balance.Algorithm) *Endpoint {
	p := (*triesPool)(t)
	i := a.Pick(p, t.svc.Rotation(), false)
	if i < 0 {
		i = a.Pick(p, t.svc.Rotation(), true)
	}
	if i < 0 {
		return nil
	}
	t.tried[i] = true
	return t.svc.Endpoints[i]
}

// triesPool is the balance.Pool of Tries: the service's endpoints, those
// tried already not candidates.
type triesPool Tries

func (p *triesPool) Len() int { return len(p.tried) }

func (p *triesPool) Candidate(i int, ignoreHealth bool) bool {
	return !p.tried[i] && p.svc.Endpoints[i].Pickable(ignoreHealth)
}

func (p *triesPool) Load(i int) (inFlight, weight int) {
	ep := p.svc.Endpoints[i]
	return ep.inFlight(), ep.Weight.Int()
}

// Now reads the registry's clock, as every endpoint of a Service has it.
func (p *triesPool) Now() time.Time {
	if len(p.svc.Endpoints) == 0 {
		return time.Now()
	}
	return p.svc.Endpoints[0].health.now()
}

func (p *triesPool) Latency(i int, now time.Time) (ewma float64, sinceReply time.Duration, known bool) {
	return p.svc.Endpoints[i].Latency(now)
}

// Interface guards
var _ balance.Pool = (*triesPool)(nil)
