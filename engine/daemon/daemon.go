package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/clock"
	"github.com/drctl/drctl/engine/schedule"
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
	opt      Options
	Metrics  *Metrics
	notify   *notifier
	host     string
	mu       sync.Mutex
	cfg      *Config
	loops    map[string]*jobLoop
	loopsWG  sync.WaitGroup
	runs     sync.WaitGroup
	runCtx   context.Context
	stopping chan struct{} // closed at shutdown: no new runs or retries
	ready    atomic.Bool
	beat     atomic.Int64 // the scheduler's last heartbeat, Unix nanoseconds
	refresh  chan struct{}
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
		refresh: make(chan struct{}, 1), host: opt.Holder}
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
	go func() { defer close(notifyDone); d.notify.run(notifyCtx, 10*time.Second) }()
	refreshDone := make(chan struct{})
	go func() { defer close(refreshDone); d.refreshLoop(ctx) }()

	d.mu.Lock()
	d.apply(ctx, d.cfg)
	d.mu.Unlock()
	d.beat.Store(d.opt.Clock.Now().UnixNano())
	heartbeat := 10 * time.Second
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-d.opt.Clock.After(heartbeat):
			d.beat.Store(d.opt.Clock.Now().UnixNano())
		}
	}

	d.opt.Logger.Info("stopping: no new runs", "grace", d.opt.Grace)
	close(d.stopping)
	d.mu.Lock()
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
	d.cfg = cfg
	d.notify.configure(cfg.Notify.Webhooks)
	d.apply(ctx, cfg)
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

// apply starts and stops job loops to match cfg; d.mu is held.
func (d *Daemon) apply(ctx context.Context, cfg *Config) {
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
				d.scheduleLoop(lctx, j)
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

// Healthy reports whether the scheduler loop ran within the last minute.
func (d *Daemon) Healthy() bool {
	return d.opt.Clock.Now().Sub(time.Unix(0, d.beat.Load())) < time.Minute
}

// Ready reports whether the repository has answered.
func (d *Daemon) Ready() bool { return d.ready.Load() }

// wait sleeps on the daemon's clock; false when ctx ended first.
func (d *Daemon) wait(ctx context.Context, delay time.Duration) bool {
	if delay <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-d.opt.Clock.After(delay):
		return true
	}
}

// readState reads a job's state, retrying until it can or ctx ends.
func (d *Daemon) readState(ctx context.Context, j Job) (catalog.JobState, bool) {
	for attempt := 1; ; attempt++ {
		s, err := catalog.ReadJobState(ctx, d.opt.Store, j.Name)
		if err == nil {
			return s, true
		}
		d.opt.Logger.Error("could not read the job's state from the repository", "job", j.Name, "error", err)
		if !d.wait(ctx, schedule.Backoff(attempt, time.Second, time.Minute)) {
			return s, false
		}
	}
}

// scheduleLoop runs a scheduled job at its times until ctx ends.
func (d *Daemon) scheduleLoop(ctx context.Context, j Job) {
	log := d.opt.Logger.With("job", j.Name)
	state, ok := d.readState(ctx, j)
	if !ok {
		return
	}
	d.Metrics.fromState(state)
	now := d.opt.Clock.Now()
	slot := j.Schedule.Next(now)
	jitter := true
	if state.LastResult == resultCancelled && !state.LastScheduled.IsZero() {
		// Stopped at a shutdown: it runs again now.
		slot, jitter = state.LastScheduled, false
		log.Info("the last run was stopped at a shutdown: running it again now")
	} else if due, missed := schedule.Catchup(j.Schedule, state.LastScheduled, now); !due.IsZero() {
		slot, jitter = due, false
		if missed > 1 {
			log.Warn("scheduled runs were missed while no daemon was running: running once now", "missed", missed, "last_scheduled", state.LastScheduled)
			d.notify.send(Event{Event: EventJobMissed, Job: j.Name, Time: now.UTC(), Host: d.host, Missed: missed,
				Error: fmt.Sprintf("%d scheduled runs missed since %s", missed, state.LastScheduled.UTC().Format(time.RFC3339))})
		} else {
			log.Info("a scheduled run passed while no daemon was running: running it now", "scheduled", due)
		}
	}
	for {
		d.Metrics.nextRun.WithLabelValues(j.Name).Set(unix(slot))
		delay := slot.Sub(d.opt.Clock.Now())
		if jitter {
			delay += schedule.Jitter(d.opt.Rand, j.Jitter)
		}
		if !d.wait(ctx, delay) {
			return
		}
		d.runSlot(ctx, j, slot)
		next, passed := schedule.After(j.Schedule, slot, d.opt.Clock.Now())
		if passed > 0 {
			log.Warn("the run took past the next scheduled time: running once more now", "passed", passed)
		}
		slot, jitter = next, passed == 0
	}
}

const resultCancelled = "cancelled"

// newRunID is 16 random hex digits.
func newRunID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// runSlot runs a job for one scheduled time, unless another daemon holds
// the job or already ran that time.
func (d *Daemon) runSlot(schedCtx context.Context, j Job, slot time.Time) {
	select {
	case <-d.stopping:
		return
	case <-schedCtx.Done():
		return
	default:
	}
	d.runs.Add(1)
	defer d.runs.Done()
	ctx := d.runCtx
	log := d.opt.Logger.With("job", j.Name)
	failEarly := func(what string, err error) {
		d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
		d.Metrics.lastFailure.WithLabelValues(j.Name).Set(unix(d.opt.Clock.Now()))
		log.Error(what, "error", err)
		d.notify.send(Event{Event: EventJobFailed, Job: j.Name, Time: d.opt.Clock.Now().UTC(), Host: d.host, Error: what + ": " + err.Error()})
	}
	lease, err := catalog.AcquireJobLease(ctx, d.opt.Store, j.Name, d.opt.Holder, d.opt.Lease)
	if errors.Is(err, catalog.ErrLeaseHeld) {
		d.Metrics.runs.WithLabelValues(j.Name, resultSkipped).Inc()
		log.Info("skipped: another daemon runs this job", "reason", err.Error())
		return
	}
	if err != nil {
		failEarly("could not take the job's lease in the repository", err)
		return
	}
	defer lease.Release(ctx)
	state, err := catalog.ReadJobState(ctx, d.opt.Store, j.Name)
	if err != nil {
		failEarly("could not read the job's state from the repository", err)
		return
	}
	d.Metrics.fromState(state)
	if !state.LastScheduled.Before(slot) && !(state.LastResult == resultCancelled && state.LastScheduled.Equal(slot)) {
		d.Metrics.runs.WithLabelValues(j.Name, resultSkipped).Inc()
		log.Info("skipped: another daemon already ran this scheduled time", "scheduled", slot)
		return
	}
	previous := state
	state.LastScheduled = slot
	state.LastResult = "running"
	state.Updated = d.opt.Clock.Now().UTC()
	if err := catalog.WriteJobState(ctx, d.opt.Store, state); err != nil {
		failEarly("could not record the run in the repository", err)
		return
	}
	run := catalog.JobRun{Job: j.Name, RunID: newRunID(), Type: j.Type, Scheduled: slot.UTC(), Start: d.opt.Clock.Now().UTC(), Host: d.opt.Holder}
	log = log.With("run_id", run.RunID)
	log.Info("run started", "scheduled", slot)
	d.Metrics.running.WithLabelValues(j.Name).Set(1)
	out, err := d.attempts(ctx, j, run.RunID, lease, log, &run.Attempts)
	d.Metrics.running.WithLabelValues(j.Name).Set(0)
	run.End = d.opt.Clock.Now().UTC()
	run.BackupID, run.Database, run.StoredBytes, run.RawBytes = out.BackupID, out.Database, out.StoredBytes, out.RawBytes
	stopped := err != nil && ctx.Err() != nil
	switch {
	case stopped:
		run.Result, run.Error = resultCancelled, "stopped at shutdown: it runs again at the next start"
	case err != nil:
		run.Result, run.Error = catalog.RunFailure, err.Error()
	default:
		run.Result = catalog.RunSuccess
	}
	// The records outlive the run's context: a cancelled run is recorded.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if perr := catalog.PutJobRun(rctx, d.opt.Store, run); perr != nil {
		log.Error("could not store the run's record", "error", perr)
	}
	state.LastRunID, state.LastResult, state.Updated = run.RunID, run.Result, run.End
	switch run.Result {
	case catalog.RunSuccess:
		state.LastSuccess, state.LastError = run.End, ""
		if out.BackupID != "" {
			state.LastBackupID, state.StoredBytes, state.RawBytes = out.BackupID, out.StoredBytes, out.RawBytes
		}
	case catalog.RunFailure:
		state.LastFailure, state.LastError = run.End, run.Error
	}
	if perr := catalog.WriteJobState(rctx, d.opt.Store, state); perr != nil {
		log.Error("could not store the job's state", "error", perr)
	}
	elapsed := run.End.Sub(run.Start)
	d.Metrics.duration.WithLabelValues(j.Name).Observe(elapsed.Seconds())
	switch run.Result {
	case catalog.RunSuccess:
		d.Metrics.runs.WithLabelValues(j.Name, resultSuccess).Inc()
		d.Metrics.fromState(state)
		log.Info("run succeeded", "backup_id", out.BackupID, "database", out.Database, "seconds", elapsed.Seconds(), "attempts", run.Attempts)
		if previous.LastResult == catalog.RunFailure {
			d.notify.send(Event{Event: EventJobRecovered, Job: j.Name, Time: run.End, Host: d.host, BackupID: out.BackupID})
		}
	case catalog.RunFailure:
		d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
		d.Metrics.lastFailure.WithLabelValues(j.Name).Set(unix(run.End))
		log.Error("run failed", "error", run.Error, "attempts", run.Attempts)
		d.notify.send(Event{Event: EventJobFailed, Job: j.Name, Time: run.End, Host: d.host, Error: run.Error})
	default:
		log.Warn("run stopped at shutdown; it runs again at the next start")
	}
	select {
	case d.refresh <- struct{}{}:
	default:
	}
}

// attempts runs the job, retrying failures with backoff; each try gets
// the job's timeout.
func (d *Daemon) attempts(ctx context.Context, j Job, runID string, lease *catalog.JobLease, log *slog.Logger, n *int) (Outcome, error) {
	for attempt := 1; ; attempt++ {
		*n = attempt
		tctx, cancel := context.WithTimeout(ctx, j.Timeout)
		out, err := d.opt.Runner.Run(tctx, j, runID)
		timedOut := tctx.Err() == context.DeadlineExceeded
		cancel()
		if err == nil {
			return out, nil
		}
		if timedOut && ctx.Err() == nil {
			err = fmt.Errorf("timed out after %s: %w", j.Timeout, err)
		}
		if ctx.Err() != nil || attempt > j.Retries {
			return out, err
		}
		if lerr := lease.Lost(); lerr != nil {
			return out, errors.Join(err, lerr)
		}
		delay := schedule.Backoff(attempt, j.RetryDelay, 30*time.Minute)
		log.Warn("run failed: retrying", "error", err, "attempt", attempt, "retry_in", delay)
		select {
		case <-d.stopping:
			return out, err
		case <-ctx.Done():
			return out, err
		case <-d.opt.Clock.After(delay):
		}
	}
}

// receiveLoop keeps a wal-receive job running on one daemon: it takes the
// job's lease (or waits as a standby), runs the receiver until it stops,
// and restarts it with backoff. Shutdown stops it at once (it stores what
// it received).
func (d *Daemon) receiveLoop(ctx context.Context, j Job) {
	log := d.opt.Logger.With("job", j.Name)
	failures := 0
	previous := ""
	if s, ok := d.readState(ctx, j); ok {
		d.Metrics.fromState(s)
		previous = s.LastResult
	}
	for ctx.Err() == nil {
		select {
		case <-d.stopping:
			return
		default:
		}
		lease, err := catalog.AcquireJobLease(ctx, d.opt.Store, j.Name, d.opt.Holder, d.opt.Lease)
		if errors.Is(err, catalog.ErrLeaseHeld) {
			d.Metrics.runs.WithLabelValues(j.Name, resultSkipped).Inc()
			log.Debug("standby: another daemon receives", "reason", err.Error())
			d.wait(ctx, d.opt.StandbyPoll)
			continue
		}
		if err != nil {
			log.Error("could not take the job's lease in the repository", "error", err)
			failures++
			d.wait(ctx, schedule.Backoff(failures, time.Second, time.Minute))
			continue
		}
		d.runs.Add(1)
		run := catalog.JobRun{Job: j.Name, RunID: newRunID(), Type: j.Type, Start: d.opt.Clock.Now().UTC(), Host: d.opt.Holder, Attempts: 1}
		run.Scheduled = run.Start
		rlog := log.With("run_id", run.RunID)
		rlog.Info("receiver started", "slot", j.Slot)
		d.Metrics.running.WithLabelValues(j.Name).Set(1)
		_, err = d.opt.Runner.Run(ctx, j, run.RunID)
		d.Metrics.running.WithLabelValues(j.Name).Set(0)
		run.End = d.opt.Clock.Now().UTC()
		ran := run.End.Sub(run.Start)
		d.Metrics.duration.WithLabelValues(j.Name).Observe(ran.Seconds())
		switch {
		case ctx.Err() != nil:
			run.Result = resultCancelled
			rlog.Info("receiver stopped")
		case err == nil:
			run.Result = catalog.RunSuccess
			d.Metrics.runs.WithLabelValues(j.Name, resultSuccess).Inc()
			d.Metrics.lastSuccess.WithLabelValues(j.Name).Set(unix(run.End))
			rlog.Warn("receiver exited: restarting it")
		default:
			run.Result, run.Error = catalog.RunFailure, err.Error()
			d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
			d.Metrics.lastFailure.WithLabelValues(j.Name).Set(unix(run.End))
			rlog.Error("receiver failed", "error", err)
			if previous != catalog.RunFailure {
				d.notify.send(Event{Event: EventJobFailed, Job: j.Name, Time: run.End, Host: d.host, Error: err.Error()})
			}
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		if perr := catalog.PutJobRun(rctx, d.opt.Store, run); perr != nil {
			rlog.Error("could not store the run's record", "error", perr)
		}
		state, serr := catalog.ReadJobState(rctx, d.opt.Store, j.Name)
		if serr == nil {
			state.LastScheduled, state.LastRunID, state.LastResult, state.Updated = run.Start, run.RunID, run.Result, run.End
			if run.Result == catalog.RunFailure {
				state.LastFailure, state.LastError = run.End, run.Error
			} else {
				state.LastSuccess = run.End
			}
			serr = catalog.WriteJobState(rctx, d.opt.Store, state)
		}
		if serr != nil {
			rlog.Error("could not store the job's state", "error", serr)
		}
		cancel()
		lease.Release(ctx)
		d.runs.Done()
		if run.Result != resultCancelled {
			previous = run.Result
		}
		if ran > time.Minute {
			failures = 0
		}
		failures++
		d.wait(ctx, schedule.Backoff(failures, time.Second, time.Minute))
	}
}
