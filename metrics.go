package svcreg

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Metrics of the registry in Caddy's metrics registry (Caddy's /metrics),
// per service, version and upstream (endpoint address), named as Caddy
// names its own (caddy_reverse_proxy_upstreams_healthy). They are read at
// scrape time from the counters every endpoint keeps anyway, so they cost
// nothing per endpoint and nothing on the request path beyond an atomic add.
//
// A request is what a client sent; a try is one attempt of it on one
// endpoint: a request that fails over makes several tries.
var (
	metricLabels = []string{"service", "version", "upstream"}
	descTries    = prometheus.NewDesc("caddy_service_registry_tries_total",
		"Tries sent to an endpoint: a request that fails over makes several.", metricLabels, nil)
	descFailures = prometheus.NewDesc("caddy_service_registry_failures_total",
		"Tries to an endpoint that failed: no connection, no answer in time, a cut connection, or a gateway error (502, 503, 504).", metricLabels, nil)
	descEjections = prometheus.NewDesc("caddy_service_registry_ejections_total",
		"Times an endpoint was taken out of rotation after failed tries.", metricLabels, nil)
	descHealthy = prometheus.NewDesc("caddy_service_registry_upstreams_healthy",
		"1 if the endpoint is in rotation, 0 if not.", metricLabels, nil)
	descWeight = prometheus.NewDesc("caddy_service_registry_upstreams_weight",
		"The endpoint's weight: 1 to 100, or 0 when drained (registered, sent no new request).", metricLabels, nil)
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
	for _, d := range []*prometheus.Desc{descTries, descFailures, descEjections, descHealthy, descWeight, descRetries, descRouted, descHedges, descHedgesWon} {
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
				c := countsOf(svc)
				ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(c.retries), svc.Name, svc.Version)
				ch <- prometheus.MustNewConstMetric(descHedges, prometheus.CounterValue, float64(c.hedges), svc.Name, svc.Version)
				ch <- prometheus.MustNewConstMetric(descHedgesWon, prometheus.CounterValue, float64(c.hedgesWon), svc.Name, svc.Version)
				for from := traffic.FromPath; from <= traffic.FromFallback; from++ {
					if n := c.routed[from]; n > 0 {
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
				ch <- prometheus.MustNewConstMetric(descTries, prometheus.CounterValue, float64(st.Requests), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(st.Failures), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(st.Ejections), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, boolGauge(st.Available), labels[:]...)
				ch <- prometheus.MustNewConstMetric(descWeight, prometheus.GaugeValue, float64(ep.Weight.Int()), labels[:]...)
			}
		}
		return true
	})
}

// Requests, counted when they end, by service, version and the class of
// the status code the client got (2xx, 4xx, 5xx...): what a dashboard
// shows per service, as Caddy's caddy_http_request_duration_seconds does
// per server. Only requests to a known service version count (a path
// naming an unknown one is client input, which must not make series).
var (
	requestLabels   = []string{"service", "version", "code_class"}
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "caddy_service_registry_request_duration_seconds",
		Help:    "Time from a request's arrival at the service proxy to its answer's header, over all its tries.",
		Buckets: prometheus.DefBuckets,
	}, requestLabels)
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_service_registry_requests_total",
		Help: "Requests answered for a service version, by code class; a request counts once, whatever its tries.",
	}, requestLabels)
)

// codeClasses are the values of the code_class label, by status / 100.
var codeClasses = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

func codeClass(status int) string {
	if c := status / 100; c >= 1 && c <= 5 {
		return codeClasses[c]
	}
	return codeClasses[0]
}

// observeRequest counts a request to a service version that took d and
// was answered with status.
func observeRequest(service, version string, status int, d time.Duration) {
	class := codeClass(status)
	requestDuration.WithLabelValues(service, version, class).Observe(d.Seconds())
	requestsTotal.WithLabelValues(service, version, class).Inc()
}

// registerMetrics adds the collectors to a config's metrics registry; like
// reverse_proxy's metrics they are shared by every config.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{collector, requestDuration, requestsTotal} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return fmt.Errorf("registering metrics: %w", err)
			}
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
