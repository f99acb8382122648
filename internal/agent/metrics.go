package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/volume"
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
			Name: "urldisk_agent_prefetch_pages_total", Help: "Cache chunks of moved machines' access traces warmed by prefetch (fetched, or found cached already).",
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

// volumeCollector publishes each running machine's volume.Stats (record
// uploads and a stalled object store) at scrape time: volumes come and go
// with their machines, so the values are read when asked, not kept.
type volumeCollector struct {
	stats                                                     func() map[string]volume.Stats // by machine name
	pending, stalled, oldest, retries, timeouts, flushTimeout *prometheus.Desc
}

func newVolumeCollector(stats func() map[string]volume.Stats) *volumeCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"machine"}, nil)
	}
	return &volumeCollector{
		stats:        stats,
		pending:      d("urldisk_agent_volume_pending_uploads", "Record uploads not finished yet (including queued ones), by machine."),
		stalled:      d("urldisk_agent_volume_stalled_uploads", "Record uploads waiting longer than the stall warning (5 s): the object store does not answer."),
		oldest:       d("urldisk_agent_volume_oldest_pending_upload_seconds", "Age of the oldest unfinished record upload (0: none)."),
		retries:      d("urldisk_agent_volume_upload_retries_total", "Record upload requests that failed and were retried."),
		timeouts:     d("urldisk_agent_volume_store_request_timeouts_total", "Record upload and read requests cut by the per-request store timeout."),
		flushTimeout: d("urldisk_agent_volume_flush_timeouts_total", "Flushes that gave up after the flush timeout (EIO; the data stayed queued)."),
	}
}

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.stalled, c.oldest, c.retries, c.timeouts, c.flushTimeout} {
		ch <- d
	}
}

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	for name, s := range c.stats() {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.PendingUploads), name)
		ch <- prometheus.MustNewConstMetric(c.stalled, prometheus.GaugeValue, float64(s.StalledUploads), name)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, s.OldestPendingAge.Seconds(), name)
		ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(s.UploadRetries), name)
		ch <- prometheus.MustNewConstMetric(c.timeouts, prometheus.CounterValue, float64(s.RequestTimeouts), name)
		ch <- prometheus.MustNewConstMetric(c.flushTimeout, prometheus.CounterValue, float64(s.FlushTimeouts), name)
	}
}

// volumeStats returns the upload statistics of the running machines'
// volumes, by machine name.
func (a *Agent) volumeStats() map[string]volume.Stats {
	a.mu.Lock()
	rs := make([]*runner, 0, len(a.runners))
	for _, r := range a.runners {
		rs = append(rs, r)
	}
	a.mu.Unlock()
	out := map[string]volume.Stats{}
	for _, r := range rs {
		r.mu.Lock()
		d := r.dev
		r.mu.Unlock()
		if d == nil {
			continue
		}
		if v, ok := d.Device.(*volume.Volume); ok {
			out[r.name] = v.Stats()
		}
	}
	return out
}
