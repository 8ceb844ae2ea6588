package daemon

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/drctl/drctl/catalog"
)

// Metrics are the daemon's Prometheus metrics. Job metrics change as runs
// end; the repository's (WAL, recovery points) come from the last refresh
// and are computed at scrape time from it, never by asking the store
// during a scrape.
type Metrics struct {
	Registry *prometheus.Registry

	lastSuccess *prometheus.GaugeVec
	lastFailure *prometheus.GaugeVec
	runs        *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	running     *prometheus.GaugeVec
	period      *prometheus.GaugeVec
	nextRun     *prometheus.GaugeVec
	stored      *prometheus.GaugeVec
	raw         *prometheus.GaugeVec
	receiveLag  *prometheus.GaugeVec
	webhooks    *prometheus.CounterVec

	objTarget     *prometheus.GaugeVec
	objAchieved   *prometheus.GaugeVec
	objMet        *prometheus.GaugeVec
	drillLast     *prometheus.GaugeVec
	drillDuration *prometheus.GaugeVec

	repo *repoCollector

	mu   sync.Mutex
	seen map[string]catalog.JobState // the newest times set per job
}

// Run results as metric labels.
const (
	resultSuccess = "success"
	resultFailure = "failure"
	resultSkipped = "skipped"
)

// NewMetrics registers every metric, with the Go and process collectors;
// now tells the time for the lag computed at scrape time.
func NewMetrics(now func() time.Time) *Metrics {
	r := prometheus.NewRegistry()
	jobGauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"job"})
	}
	m := &Metrics{
		Registry:    r,
		lastSuccess: jobGauge("drctl_job_last_success_timestamp_seconds", "When the job's last successful run ended (Unix time)."),
		lastFailure: jobGauge("drctl_job_last_failure_timestamp_seconds", "When the job's last failed run ended (Unix time)."),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drctl_job_runs_total",
			Help: "Runs of the job by result: success, failure, or skipped (another daemon ran it)."}, []string{"job", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "drctl_job_duration_seconds",
			Help:    "How long the job's runs took, retries included.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800}}, []string{"job"}),
		running:    jobGauge("drctl_job_running", "1 while a run of the job is in progress on this daemon."),
		period:     jobGauge("drctl_job_period_seconds", "The time between two scheduled runs of the job."),
		nextRun:    jobGauge("drctl_job_next_run_timestamp_seconds", "When the job is scheduled to run next (Unix time)."),
		stored:     jobGauge("drctl_backup_stored_bytes", "Bytes the job's last backup stored in the repository."),
		raw:        jobGauge("drctl_backup_raw_bytes", "Bytes the job's last backup read from the database, before compression."),
		receiveLag: jobGauge("drctl_wal_receive_lag_bytes", "How far the WAL receiver's replication slot is behind the server's current WAL position."),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drctl_webhook_deliveries_total",
			Help: "Webhook deliveries by event and result (delivered, failed after every retry, dropped)."}, []string{"event", "result"}),
		repo: &repoCollector{now: now},
		seen: map[string]catalog.JobState{},
	}
	objective := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"process", "objective"})
	}
	m.objTarget = objective("drctl_objective_target_seconds", "A process's recovery objective: rpo, rto, or drill (the longest a drill may be ago).")
	m.objAchieved = objective("drctl_objective_achieved_seconds", "What the repository's records show for the objective (-1: nothing to measure).")
	m.objMet = objective("drctl_objective_met", "1 when the objective holds, 0 when it does not (the policy job's last judgement).")
	m.drillLast = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drctl_drill_last_timestamp_seconds",
		Help: "When the process's last drill with this result (passed, failed) ended (Unix time)."}, []string{"process", "result"})
	m.drillDuration = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drctl_drill_duration_seconds",
		Help: "The measured restore time of the process's last drill."}, []string{"process"})
	r.MustRegister(m.objTarget, m.objAchieved, m.objMet, m.drillLast, m.drillDuration)
	r.MustRegister(m.lastSuccess, m.lastFailure, m.runs, m.duration, m.running, m.period, m.nextRun,
		m.stored, m.raw, m.receiveLag, m.webhooks, m.repo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// declareJob makes a job's series exist from the start (zero counts), so
// that alerts and dashboards see a job that has not run yet.
func (m *Metrics) declareJob(j Job, period time.Duration) {
	for _, r := range []string{resultSuccess, resultFailure, resultSkipped} {
		m.runs.WithLabelValues(j.Name, r)
	}
	m.running.WithLabelValues(j.Name).Set(0)
	if period > 0 {
		m.period.WithLabelValues(j.Name).Set(period.Seconds())
	}
}

// success and failure record a run's end (only ever forward).
func (m *Metrics) success(job string, at time.Time) {
	m.fromState(catalog.JobState{Job: job, LastSuccess: at})
}

func (m *Metrics) failure(job string, at time.Time) {
	m.fromState(catalog.JobState{Job: job, LastFailure: at})
}

// forgetJob removes the series of a job no longer configured.
func (m *Metrics) forgetJob(name string) {
	m.mu.Lock()
	delete(m.seen, name)
	m.mu.Unlock()
	for _, v := range []*prometheus.GaugeVec{m.lastSuccess, m.lastFailure, m.running, m.period, m.nextRun, m.stored, m.raw, m.receiveLag} {
		v.DeleteLabelValues(name)
	}
	for _, r := range []string{resultSuccess, resultFailure, resultSkipped} {
		m.runs.DeleteLabelValues(name, r)
	}
	m.duration.DeleteLabelValues(name)
}

// fromState sets what the repository remembers of a job (after a restart,
// or another daemon's runs); a time only ever moves forward.
func (m *Metrics) fromState(s catalog.JobState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.seen[s.Job]
	if s.LastSuccess.After(seen.LastSuccess) {
		seen.LastSuccess = s.LastSuccess
		m.lastSuccess.WithLabelValues(s.Job).Set(unix(s.LastSuccess))
		if s.StoredBytes > 0 {
			m.stored.WithLabelValues(s.Job).Set(float64(s.StoredBytes))
			m.raw.WithLabelValues(s.Job).Set(float64(s.RawBytes))
		}
	}
	if s.LastFailure.After(seen.LastFailure) {
		seen.LastFailure = s.LastFailure
		m.lastFailure.WithLabelValues(s.Job).Set(unix(s.LastFailure))
	}
	m.seen[s.Job] = seen
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// repoState is what the last refresh read from the repository.
type repoState struct {
	ok            bool
	refreshed     time.Time
	lastWAL       time.Time // zero: no WAL archived
	recoveryPoint map[[2]string]time.Time
}

// repoCollector computes the repository's metrics at scrape time from the
// last refresh: the archive lag grows between refreshes as it should.
type repoCollector struct {
	now   func() time.Time
	mu    sync.Mutex
	state repoState
}

var (
	descUp         = prometheus.NewDesc("drctl_repository_up", "1 when the last read of the repository succeeded.", nil, nil)
	descRefreshed  = prometheus.NewDesc("drctl_repository_refresh_timestamp_seconds", "When the repository was last read successfully (Unix time).", nil, nil)
	descLastWAL    = prometheus.NewDesc("drctl_wal_last_archived_timestamp_seconds", "When the newest WAL in the repository was stored (Unix time), by archive_command or wal-receive.", nil, nil)
	descArchiveLag = prometheus.NewDesc("drctl_wal_archive_lag_seconds", "Now minus the time the newest WAL in the repository was stored.", nil, nil)
	descRecovery   = prometheus.NewDesc("drctl_recovery_point_timestamp_seconds",
		"The newest point a database can be restored to (Unix time): the start of its newest logical backup (kind=logical), or the newest archived WAL after a base backup (kind=physical, database=\"*\": the whole cluster).",
		[]string{"database", "kind"}, nil)
)

func (c *repoCollector) set(s repoState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ok {
		c.state = s
		return
	}
	c.state.ok = false
}

func (c *repoCollector) get() repoState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

func (c *repoCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descRefreshed, descLastWAL, descArchiveLag, descRecovery} {
		ch <- d
	}
}

func (c *repoCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.get()
	up := 0.0
	if s.ok {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up)
	if s.refreshed.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descRefreshed, prometheus.GaugeValue, unix(s.refreshed))
	if !s.lastWAL.IsZero() {
		ch <- prometheus.MustNewConstMetric(descLastWAL, prometheus.GaugeValue, unix(s.lastWAL))
		ch <- prometheus.MustNewConstMetric(descArchiveLag, prometheus.GaugeValue, max(0, c.now().Sub(s.lastWAL).Seconds()))
	}
	for k, t := range s.recoveryPoint {
		ch <- prometheus.MustNewConstMetric(descRecovery, prometheus.GaugeValue, unix(t), k[0], k[1])
	}
}
