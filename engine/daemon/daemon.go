package daemon

import (
	"context"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/clock"
	"github.com/drctl/drctl/storage"
)

// Runner does a job's work: cmd runs drctl itself, one process per run.
// Run returns when the work is done or ctx is cancelled (a cancelled run
// must stop cleanly: nothing partial committed).
type Runner interface {
	Run(ctx context.Context, job Job, runID string) (Outcome, error)
}

// Outcome is what a run produced.
type Outcome struct {
	BackupID    string
	Database    string
	StoredBytes int64
	RawBytes    int64
	// Drill is what a drill job found (also when the drill failed).
	Drill *DrillOutcome
	// Objectives is what a policy job judged.
	Objectives []ObjectiveOutcome
}

// DrillOutcome is a drill's result, for the metrics.
type DrillOutcome struct {
	Process string
	Passed  bool
	Seconds float64
	End     time.Time
}

// ObjectiveOutcome is one process's objective as a policy job judged it.
type ObjectiveOutcome struct {
	Process   string  `json:"process"`
	Objective string  `json:"objective"`
	Target    float64 `json:"target_seconds"`
	Achieved  float64 `json:"achieved_seconds"`
	Met       bool    `json:"met"`
	Reason    string  `json:"reason"`
}

// Options wire a daemon.
type Options struct {
	Store  storage.Store
	Runner Runner
	Clock  clock.Clock
	Logger *slog.Logger
	// Holder names this daemon in job leases: host or pod name, and pid.
	Holder string
	// Rand draws jitter: rand.Int64N when nil.
	Rand func(int64) int64
	// Grace is how long running jobs get to finish at shutdown before
	// they are cancelled.
	Grace time.Duration
	// Verifier, when set, makes the repository's state ignore unsigned
	// backups, as every reader does.
	Verifier catalog.Verifier
	// ReceiveLag measures a wal-receive job's lag in bytes (cmd asks the
	// server); nil: not measured.
	ReceiveLag func(ctx context.Context, job Job) (int64, error)
	// HTTPClient posts webhooks.
	HTTPClient *http.Client
	// Lease tunes job leases (tests shorten them).
	Lease catalog.LeaseOptions
	// StandbyPoll is how often a wal-receive job whose lease another
	// daemon holds tries again (default 15 s).
	StandbyPoll time.Duration
}

// Daemon runs the jobs of a configuration.
type Daemon struct {
	opt         Options
	Metrics     *Metrics
	notify      *notifier
	host        string
	mu          sync.Mutex
	cfg         *Config
	loops       map[string]*jobLoop
	loopsWG     sync.WaitGroup
	runs        sync.WaitGroup
	runCtx      context.Context
	stopping    chan struct{} // closed at shutdown: no new runs or retries
	stopped     bool          // under mu: set with stopping closed
	ready       atomic.Bool
	beat        atomic.Int64 // the scheduler's last heartbeat, Unix nanoseconds
	refreshBeat atomic.Int64 // the last refresh of the repository's state, finished or failed
	refresh     chan struct{}
	// alerted: jobs whose failure was sent and not yet followed by
	// job_recovered (one job_failed per failure streak per daemon).
	alerted map[string]bool
	// pruned: when each job's old run records were last deleted.
	pruned map[string]time.Time
	// failing: the objectives (process/objective) that do not hold, as
	// last judged (objective_failed once per streak).
	failing map[string]bool
}

type jobLoop struct {
	job    Job
	cancel context.CancelFunc
	done   chan struct{}
}

// New prepares a daemon for cfg; Run starts it.
func New(cfg *Config, opt Options) *Daemon {
	if opt.Clock == nil {
		opt.Clock = clock.Real{}
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Rand == nil {
		opt.Rand = mrand.Int64N
	}
	if opt.StandbyPoll <= 0 {
		opt.StandbyPoll = 15 * time.Second
	}
	opt.Lease = opt.Lease.Defaults(opt.Clock.Now, opt.Logger)
	d := &Daemon{opt: opt, cfg: cfg, loops: map[string]*jobLoop{}, stopping: make(chan struct{}),
		refresh: make(chan struct{}, 1), host: opt.Holder, alerted: map[string]bool{}, pruned: map[string]time.Time{}, failing: map[string]bool{}}
	d.Metrics = NewMetrics(opt.Clock.Now)
	d.notify = newNotifier(opt.HTTPClient, opt.Clock, opt.Logger, d.Metrics)
	d.notify.configure(cfg.Notify.Webhooks)
	return d
}

// Run schedules the jobs until ctx is done, then shuts down: no new runs,
// running ones get the grace period, then are cancelled and waited for.
func (d *Daemon) Run(ctx context.Context) error {
	runCtx, cancelRuns := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRuns()
	d.runCtx = runCtx
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	notifyDone := make(chan struct{})
	go func() { defer close(notifyDone); d.notify.run(notifyCtx, 3*time.Second) }()
	refreshDone := make(chan struct{})
	go func() { defer close(refreshDone); d.refreshLoop(ctx) }()

	d.mu.Lock()
	d.apply(ctx, d.cfg, true)
	d.mu.Unlock()
	d.beat.Store(d.opt.Clock.Now().UnixNano())
	d.refreshBeat.Store(d.opt.Clock.Now().UnixNano())
	heartbeat := 10 * time.Second
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-d.opt.Clock.After(heartbeat):
			d.beat.Store(d.opt.Clock.Now().UnixNano())
		}
	}

	d.opt.Logger.Info("stopping: no new runs", "grace", d.opt.Grace)
	d.mu.Lock()
	d.stopped = true
	close(d.stopping)
	for _, l := range d.loops {
		l.cancel()
	}
	d.mu.Unlock()
	finished := make(chan struct{})
	go func() { d.runs.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-d.opt.Clock.After(d.opt.Grace):
		d.opt.Logger.Warn("grace period over: cancelling the running jobs")
		cancelRuns()
		<-finished
	}
	d.loopsWG.Wait()
	<-refreshDone
	stopNotify()
	<-notifyDone
	d.opt.Logger.Info("stopped")
	return nil
}

// Reload applies a new configuration: jobs removed or changed stop being
// scheduled (a run in progress finishes), new and changed ones start.
func (d *Daemon) Reload(ctx context.Context, cfg *Config) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.cfg = cfg
	d.notify.configure(cfg.Notify.Webhooks)
	d.apply(ctx, cfg, false)
	select {
	case d.refresh <- struct{}{}:
	default:
	}
}

// Config is the configuration in force.
func (d *Daemon) Config() *Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// apply starts and stops job loops to match cfg; d.mu is held. At start
// (not at a reload) a job catches up on the times it missed.
func (d *Daemon) apply(ctx context.Context, cfg *Config, starting bool) {
	want := map[string]Job{}
	for _, j := range cfg.Jobs {
		want[j.Name] = j
	}
	for name, l := range d.loops {
		if j, ok := want[name]; ok && sameJob(j, l.job) {
			continue
		}
		// A run in progress finishes (it holds the job's lease: the new
		// loop's runs skip until it ends); only the scheduling stops.
		l.cancel()
		delete(d.loops, name)
		if _, ok := want[name]; !ok {
			d.Metrics.forgetJob(name)
			d.opt.Logger.Info("job removed", "job", name)
		}
	}
	for name, j := range want {
		if _, ok := d.loops[name]; ok {
			continue
		}
		lctx, cancel := context.WithCancel(ctx)
		l := &jobLoop{job: j, cancel: cancel, done: make(chan struct{})}
		d.loops[name] = l
		var period time.Duration
		if j.Schedule != nil {
			period = j.Schedule.Period(d.opt.Clock.Now())
		}
		d.Metrics.declareJob(j, period)
		d.loopsWG.Add(1)
		go func() {
			defer d.loopsWG.Done()
			defer close(l.done)
			if j.Type == TypeWALReceive {
				d.receiveLoop(lctx, j)
			} else {
				d.scheduleLoop(lctx, j, starting)
			}
		}()
	}
}

func sameJob(a, b Job) bool {
	as, bs := "", ""
	if a.Schedule != nil {
		as = a.Schedule.String()
	}
	if b.Schedule != nil {
		bs = b.Schedule.String()
	}
	a.Schedule, b.Schedule, a.Line, b.Line = nil, nil, 0, 0
	return as == bs && reflect.DeepEqual(a, b)
}

// Healthy reports whether the scheduler's heartbeat is fresh and the
// repository's state was refreshed (or failed to be: a down repository is
// not the daemon's fault) recently — every store call has a timeout, so
// a refresh that does not come back is a wedged daemon a restart cures.
func (d *Daemon) Healthy() bool {
	now := d.opt.Clock.Now()
	refreshLimit := max(5*time.Minute, 3*d.Config().Refresh+2*storeTimeout)
	return now.Sub(time.Unix(0, d.beat.Load())) < time.Minute && now.Sub(time.Unix(0, d.refreshBeat.Load())) < refreshLimit
}

// storeTimeout bounds each of the daemon's own calls to the repository.
const storeTimeout = time.Minute

// configured reports whether a job of that name is in the configuration.
func (d *Daemon) configured(name string) bool {
	for _, j := range d.Config().Jobs {
		if j.Name == name {
			return true
		}
	}
	return false
}

// begin registers a run unless the daemon is stopping (atomically with
// shutdown's wait for the runs).
func (d *Daemon) begin() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return false
	}
	d.runs.Add(1)
	return true
}

// Ready reports whether the repository has answered.
func (d *Daemon) Ready() bool { return d.ready.Load() }
