package svcreg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the registry, in Caddy's metrics registry (Caddy's /metrics):
// per service, version and upstream (endpoint address).
var registryMetrics = struct {
	requests, failures, ejections *prometheus.CounterVec
	retries                       *prometheus.CounterVec
	healthy                       *prometheus.GaugeVec
}{
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "service_registry", Name: "requests_total",
		Help: "Tries sent to an endpoint.",
	}, []string{"service", "version", "upstream"}),
	failures: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "service_registry", Name: "failures_total",
		Help: "Tries to an endpoint that failed without an answer.",
	}, []string{"service", "version", "upstream"}),
	ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "service_registry", Name: "ejections_total",
		Help: "Times an endpoint was taken out of rotation after a failed request.",
	}, []string{"service", "version", "upstream"}),
	retries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "service_registry", Name: "retries_total",
		Help: "Tries after the first one of a request.",
	}, []string{"service", "version"}),
	healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "service_registry", Name: "upstream_healthy",
		Help: "1 if the endpoint is in rotation, 0 if not.",
	}, []string{"service", "version", "upstream"}),
}

// registerMetrics adds the registry's metrics to a config's registry; the
// collectors are shared by every config, like reverse_proxy's.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{registryMetrics.requests, registryMetrics.failures,
		registryMetrics.ejections, registryMetrics.retries, registryMetrics.healthy} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) || already.ExistingCollector != c {
				return fmt.Errorf("registering metrics: %w", err)
			}
		}
	}
	return nil
}

// endpointMetrics are one endpoint's metrics, looked up once.
type endpointMetrics struct {
	labels                        []string
	requests, failures, ejections prometheus.Counter
	healthy                       prometheus.Gauge
}

func newEndpointMetrics(key ServiceKey, address string) *endpointMetrics {
	l := []string{key.Service, key.Version, address}
	m := &endpointMetrics{
		labels:    l,
		requests:  registryMetrics.requests.WithLabelValues(l...),
		failures:  registryMetrics.failures.WithLabelValues(l...),
		ejections: registryMetrics.ejections.WithLabelValues(l...),
		healthy:   registryMetrics.healthy.WithLabelValues(l...),
	}
	m.healthy.Set(1)
	return m
}

// forget drops the series of an endpoint that left the registry.
func (m *endpointMetrics) forget() {
	registryMetrics.requests.DeleteLabelValues(m.labels...)
	registryMetrics.failures.DeleteLabelValues(m.labels...)
	registryMetrics.ejections.DeleteLabelValues(m.labels...)
	registryMetrics.healthy.DeleteLabelValues(m.labels...)
}
