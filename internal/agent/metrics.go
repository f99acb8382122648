package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/urldisk/urldisk/internal/cache"
)

// metrics are the agent's Prometheus metrics, in its own registry (no
// global state).
type metrics struct {
	reg *prometheus.Registry

	ioRequests *prometheus.CounterVec   // machine, op
	ioBytes    *prometheus.CounterVec   // machine, op
	ioErrors   *prometheus.CounterVec   // machine, op
	flush      *prometheus.HistogramVec // machine
	fenced     prometheus.Counter
	machines   *prometheus.GaugeVec // phase
	downtime   prometheus.Histogram
	failovers  prometheus.Counter
	hbErrors   prometheus.Counter
	recErrors  prometheus.Counter
	prefetched prometheus.Counter
	starts     *prometheus.CounterVec // result
}

func newMetrics(c *cache.Cache) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		ioRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urldisk_agent_io_requests_total", Help: "NBD requests served, by machine and operation.",
		}, []string{"machine", "op"}),
		ioBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urldisk_agent_io_bytes_total", Help: "Bytes read and written by machines.",
		}, []string{"machine", "op"}),
		ioErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urldisk_agent_io_errors_total", Help: "NBD requests that failed, by machine and operation.",
		}, []string{"machine", "op"}),
		flush: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "urldisk_agent_flush_seconds", Help: "Latency of flushes (durable in the object store).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"machine"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "urldisk_agent_fenced_total", Help: "Machines stopped because another host took their volume over.",
		}),
		machines: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urldisk_agent_machines", Help: "Machines on this agent by phase.",
		}, []string{"phase"}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "urldisk_agent_move_downtime_seconds", Help: "From the previous host's stop to the first request served here, for moved machines.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "urldisk_agent_failovers_total", Help: "Machines this agent moved off dead hosts.",
		}),
		hbErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "urldisk_agent_heartbeat_errors_total", Help: "Heartbeats that could not be written.",
		}),
		recErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "urldisk_agent_reconcile_errors_total", Help: "Reconcile rounds that could not read the fleet state.",
		}),
		prefetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "urldisk_agent_prefetch_pages_total", Help: "Pages read ahead into the cache from moved machines' access traces.",
		}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urldisk_agent_machine_starts_total", Help: "Machine start attempts by result.",
		}, []string{"result"}),
	}
	reg.MustRegister(m.ioRequests, m.ioBytes, m.ioErrors, m.flush, m.fenced, m.machines, m.downtime,
		m.failovers, m.hbErrors, m.recErrors, m.prefetched, m.starts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if c != nil {
		stat := func(f func(cache.Stats) float64) func() float64 { return func() float64 { return f(c.Stats()) } }
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "urldisk_agent_cache_hits_total", Help: "Host cache reads that hit."},
				stat(func(s cache.Stats) float64 { return float64(s.Hits) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "urldisk_agent_cache_misses_total", Help: "Host cache reads that missed."},
				stat(func(s cache.Stats) float64 { return float64(s.Misses) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "urldisk_agent_cache_corrupt_total", Help: "Cached chunks dropped for a bad checksum."},
				stat(func(s cache.Stats) float64 { return float64(s.Corrupt) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "urldisk_agent_cache_bytes", Help: "Bytes in the host cache."},
				stat(func(s cache.Stats) float64 { return float64(s.Bytes) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "urldisk_agent_cache_capacity_bytes", Help: "Host cache capacity."},
				stat(func(s cache.Stats) float64 { return float64(s.Capacity) })),
		)
	}
	return m
}

// machineMetrics are one machine's curried metrics.
type machineMetrics struct {
	requests, bytes, errors *prometheus.CounterVec
	flush                   prometheus.Observer
}

func (m *metrics) forMachine(name string) *machineMetrics {
	l := prometheus.Labels{"machine": name}
	return &machineMetrics{
		requests: m.ioRequests.MustCurryWith(l),
		bytes:    m.ioBytes.MustCurryWith(l),
		errors:   m.ioErrors.MustCurryWith(l),
		flush:    m.flush.With(l),
	}
}
