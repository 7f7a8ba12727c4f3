package svcreg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/svcreg/caddy-svcreg/registry"
)

// Metrics of the registry in Caddy's metrics registry (Caddy's /metrics),
// per service, version and upstream (endpoint address). They are read at
// scrape time from the counters every endpoint keeps anyway, so they cost
// nothing per endpoint and nothing on the request path beyond an atomic add.
var (
	metricLabels = []string{"service", "version", "upstream"}
	descRequests = prometheus.NewDesc("caddy_service_registry_requests_total",
		"Tries sent to an endpoint.", metricLabels, nil)
	descFailures = prometheus.NewDesc("caddy_service_registry_failures_total",
		"Tries to an endpoint that failed: no connection, no answer in time, a cut connection, or a gateway error (502, 503, 504).", metricLabels, nil)
	descEjections = prometheus.NewDesc("caddy_service_registry_ejections_total",
		"Times an endpoint was taken out of rotation after failed tries.", metricLabels, nil)
	descHealthy = prometheus.NewDesc("caddy_service_registry_upstream_healthy",
		"1 if the endpoint is in rotation, 0 if not.", metricLabels, nil)
	descRetries = prometheus.NewDesc("caddy_service_registry_retries_total",
		"Tries after the first one of a request.", []string{"service", "version"}, nil)
	descHedges = prometheus.NewDesc("caddy_service_registry_hedges_total",
		"Backup (hedged) tries sent to another host while a request's try waited for its answer.", []string{"service", "version"}, nil)
	descHedgesWon = prometheus.NewDesc("caddy_service_registry_hedges_won_total",
		"Backup (hedged) tries that answered before the try they backed up.", []string{"service", "version"}, nil)
	descRouted = prometheus.NewDesc("caddy_service_registry_version_requests_total",
		"Requests routed to a service version, by why it was chosen: path, alias, header, cookie, sticky, split or fallback.",
		[]string{"service", "version", "from"}, nil)
)

// registryCollector reports the endpoints of every running registry.
type registryCollector struct{}

// collector is registered in the metrics registry of every config.
var collector registryCollector

// Describe sends the metric descriptions.
func (registryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descFailures, descEjections, descHealthy, descRetries, descRouted, descHedges, descHedgesWon} {
		ch <- d
	}
}

// Collect reads the current snapshot of every registry. During a config
// reload two registries may briefly hold the same endpoint; it is
// reported once.
func (registryCollector) Collect(ch chan<- prometheus.Metric) {
	seenServices := map[registry.ServiceKey]bool{}
	seenEndpoints := map[[3]string]bool{}
	registries.Range(func(_, v any) bool {
		r, ok := v.(*pooledRegistry)
		if !ok {
			return true
		}
		for _, svc := range r.Snapshot().Services() {
			if !seenServices[svc.Key()] {
				seenServices[svc.Key()] = true
				ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(svc.Retries()), svc.Name, svc.Version)
				hedges, won := svc.Hedges()
				ch <- prometheus.MustNewConstMetric(descHedges, prometheus.CounterValue, float64(hedges), svc.Name, svc.Version)
				ch <- prometheus.MustNewConstMetric(descHedgesWon, prometheus.CounterValue, float64(won), svc.Name, svc.Version)
				for from := registry.FromPath; from <= registry.FromFallback; from++ {
					if n := svc.Routed(from); n > 0 {
						ch <- prometheus.MustNewConstMetric(descRouted, prometheus.CounterValue, float64(n), svc.Name, svc.Version, from.String())
					}
				}
			}
			for _, ep := range svc.Endpoints {
				labels := [3]string{svc.Name, svc.Version, ep.Address}
				if seenEndpoints[labels] {
					continue
				}
				seenEndpoints[labels] = true
				st := ep.Stats()
				ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(st.Requests), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(st.Failures), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(st.Ejections), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, boolGauge(st.Available), labels[:]...)
			}
		}
		return true
	})
}

// registerMetrics adds the collector to a config's metrics registry; like
// reverse_proxy's metrics it is shared by every config.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	if err := reg.Register(collector); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Interface guards
var _ prometheus.Collector = registryCollector{}
