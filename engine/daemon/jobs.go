package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/schedule"
)

// Run results beyond catalog's: a run stopped at a shutdown, and one
// that was in progress (a daemon holds the job's lease meanwhile).
const (
	resultCancelled = "cancelled"
	resultRunning   = "running"
)

// maxSkew is how far in the future a time read from the repository may be
// before it is taken for forged or broken.
const maxSkew = 10 * time.Minute

// runHistory is how long run records are kept.
const runHistory = 90 * 24 * time.Hour

// errStopped: the daemon is shutting down; the run is redone at the next
// start.
var errStopped = errors.New("stopped at shutdown: it runs again at the next start")

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

// storeCtx bounds one call to the repository.
func storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// readState reads a job's state, retrying until it can or ctx ends. A
// state that cannot be understood (or claims a future time) is reported
// and ignored: the next run writes a good one.
func (d *Daemon) readState(ctx context.Context, j Job) (catalog.JobState, bool) {
	for attempt := 1; ; attempt++ {
		sctx, cancel := storeCtx(ctx)
		s, err := catalog.ReadJobState(sctx, d.opt.Store, j.Name)
		cancel()
		if errors.Is(err, catalog.ErrCorruptRecord) {
			d.opt.Logger.Error("the job's state in the repository is unreadable: ignored", "job", j.Name, "error", err)
			return catalog.JobState{Job: j.Name}, true
		}
		if err == nil {
			return d.sane(s), true
		}
		d.opt.Logger.Error("could not read the job's state from the repository", "job", j.Name, "error", err)
		if !d.wait(ctx, schedule.Backoff(attempt, time.Second, time.Minute)) {
			return s, false
		}
	}
}

// sane drops the times of a state that lie in the future (a forged or
// broken state must not stop a job or silence its alerts).
func (d *Daemon) sane(s catalog.JobState) catalog.JobState {
	limit := d.opt.Clock.Now().Add(maxSkew)
	for _, t := range []*time.Time{&s.LastScheduled, &s.LastSuccess, &s.LastFailure} {
		if t.After(limit) {
			d.opt.Logger.Error("the job's state in the repository names a time in the future: ignored", "job", s.Job, "time", *t)
			*t = time.Time{}
		}
	}
	return s
}

// owed reports whether the job's last run did not finish: stopped at a
// shutdown, or in progress when its daemon died (its lease then expires).
func owed(s catalog.JobState) bool {
	return !s.LastScheduled.IsZero() && (s.LastResult == resultCancelled || s.LastResult == resultRunning)
}

// scheduleLoop runs a scheduled job at its times until ctx ends. At the
// daemon's start (not at a reload) it first makes up for what was missed.
func (d *Daemon) scheduleLoop(ctx context.Context, j Job, starting bool) {
	log := d.opt.Logger.With("job", j.Name)
	state, ok := d.readState(ctx, j)
	if !ok {
		return
	}
	d.Metrics.fromState(state)
	now := d.opt.Clock.Now()
	slot := j.Schedule.Next(now)
	jitter := true
	switch due, missed := schedule.Catchup(j.Schedule, state.LastScheduled, now); {
	case owed(state):
		// Stopped at a shutdown, or its daemon died: it runs again now.
		slot, jitter = state.LastScheduled, false
		log.Info("the last run did not finish: running it again now", "scheduled", slot, "result", state.LastResult)
	case starting && !due.IsZero():
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
		if slot.IsZero() {
			log.Error("the schedule has no next time: the job stops")
			return
		}
		d.Metrics.nextRun.WithLabelValues(j.Name).Set(unix(slot))
		delay := slot.Sub(d.opt.Clock.Now())
		if jitter {
			delay += schedule.Jitter(d.opt.Rand, j.Jitter)
		}
		if !d.wait(ctx, delay) {
			return
		}
		// Another daemon holds the job: it may be running this very time
		// (and then it is done), or be stopping without finishing it (and
		// then it is owed): try again until the next time comes.
		for d.runSlot(ctx, j, slot) == slotHeld {
			if next := j.Schedule.Next(slot); !d.opt.Clock.Now().Add(d.opt.StandbyPoll).Before(next) || !d.wait(ctx, d.opt.StandbyPoll) {
				break
			}
		}
		if ctx.Err() != nil {
			return
		}
		d.Metrics.period.WithLabelValues(j.Name).Set(j.Schedule.Period(d.opt.Clock.Now()).Seconds())
		next, passed := schedule.After(j.Schedule, slot, d.opt.Clock.Now())
		if passed > 0 {
			log.Warn("the run took past the next scheduled time: running once more now", "passed", passed)
		}
		slot, jitter = next, passed == 0
	}
}

type slotOutcome int

const (
	slotDone slotOutcome = iota // ran, failed, or found already run
	slotHeld                    // another daemon holds the job's lease
)

// runSlot runs a job for one scheduled time, unless another daemon holds
// the job or already ran that time.
func (d *Daemon) runSlot(schedCtx context.Context, j Job, slot time.Time) slotOutcome {
	if schedCtx.Err() != nil || !d.begin() {
		return slotDone
	}
	defer d.runs.Done()
	ctx := d.runCtx
	log := d.opt.Logger.With("job", j.Name)
	fail := func(what string, err error) {
		d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
		d.Metrics.failure(j.Name, d.opt.Clock.Now())
		log.Error(what, "error", err)
		d.alert(Event{Event: EventJobFailed, Job: j.Name, Time: d.opt.Clock.Now().UTC(), Host: d.host, Error: what + ": " + err.Error()})
	}
	lctx, cancel := storeCtx(ctx)
	lease, err := catalog.AcquireJobLease(lctx, d.opt.Store, j.Name, d.opt.Holder, d.opt.Lease)
	cancel()
	if errors.Is(err, catalog.ErrLeaseHeld) {
		d.Metrics.runs.WithLabelValues(j.Name, resultSkipped).Inc()
		log.Info("skipped: another daemon holds the job", "reason", err.Error())
		return slotHeld
	}
	if err != nil {
		fail("could not take the job's lease in the repository", err)
		return slotDone
	}
	defer lease.Release(ctx)
	sctx, cancel := storeCtx(ctx)
	state, err := catalog.ReadJobState(sctx, d.opt.Store, j.Name)
	cancel()
	switch {
	case errors.Is(err, catalog.ErrCorruptRecord):
		log.Error("the job's state in the repository is unreadable: replaced", "error", err)
		state = catalog.JobState{Job: j.Name}
	case err != nil:
		fail("could not read the job's state from the repository", err)
		return slotDone
	}
	state = d.sane(state)
	d.Metrics.fromState(state)
	redo := owed(state)
	if state.LastResult == resultRunning && !state.LastScheduled.IsZero() {
		// We hold the lease, so the daemon that was running it is gone.
		interrupted := catalog.JobRun{Job: j.Name, RunID: state.LastRunID, Type: j.Type, Scheduled: state.LastScheduled,
			Start: state.Updated, End: d.opt.Clock.Now().UTC(), Result: catalog.RunFailure,
			Error: "the daemon running it stopped without finishing it (killed, or lost its lease)", Host: d.opt.Holder}
		if validRun(interrupted) {
			d.record(ctx, log, interrupted)
		}
		state.LastResult, state.LastFailure, state.LastError = catalog.RunFailure, interrupted.End, interrupted.Error
		fail("the last run did not finish", errors.New(interrupted.Error))
	}
	if !state.LastScheduled.Before(slot) && !(redo && state.LastScheduled.Equal(slot)) {
		d.Metrics.runs.WithLabelValues(j.Name, resultSkipped).Inc()
		log.Info("skipped: another daemon already ran this scheduled time", "scheduled", slot)
		return slotDone
	}
	previous := state
	run := catalog.JobRun{Job: j.Name, RunID: catalog.NewRecordID(), Type: j.Type, Scheduled: slot.UTC(), Start: d.opt.Clock.Now().UTC(), Host: d.opt.Holder}
	state.LastScheduled, state.LastRunID, state.LastResult, state.Updated = slot, run.RunID, resultRunning, run.Start
	wctx, cancel := storeCtx(ctx)
	err = catalog.WriteJobState(wctx, d.opt.Store, state)
	cancel()
	if err != nil {
		fail("could not record the run in the repository", err)
		return slotDone
	}
	log = log.With("run_id", run.RunID)
	log.Info("run started", "scheduled", slot)
	d.Metrics.running.WithLabelValues(j.Name).Set(1)
	// The run stops when the lease is lost: another daemon may take the job.
	rctx, stopRun := context.WithCancel(ctx)
	go func() {
		select {
		case <-lease.LostCh():
			stopRun()
		case <-rctx.Done():
		}
	}()
	out, err := d.attempts(rctx, j, run.RunID, log, &run.Attempts)
	stopRun()
	d.observe(j, out)
	if d.configured(j.Name) {
		d.Metrics.running.WithLabelValues(j.Name).Set(0)
	}
	run.End = d.opt.Clock.Now().UTC()
	run.BackupID, run.Database, run.StoredBytes, run.RawBytes = out.BackupID, out.Database, out.StoredBytes, out.RawBytes
	if lerr := lease.Lost(); lerr != nil {
		// Another daemon may own the job's records now: write nothing.
		d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
		log.Error("run abandoned: the job's lease was lost", "error", lerr, "backup_id", out.BackupID)
		return slotDone
	}
	switch {
	case errors.Is(err, errStopped) || err != nil && ctx.Err() != nil:
		run.Result, run.Error = resultCancelled, errStopped.Error()
	case err != nil:
		run.Result, run.Error = catalog.RunFailure, err.Error()
	default:
		run.Result = catalog.RunSuccess
	}
	d.record(ctx, log, run)
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
	// The records outlive the run's context: a cancelled run is recorded.
	wctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if perr := catalog.WriteJobState(wctx, d.opt.Store, state); perr != nil {
		log.Error("could not store the job's state", "error", perr)
	}
	cancel()
	if !d.configured(j.Name) {
		return slotDone // removed by a reload meanwhile: its series are gone
	}
	elapsed := run.End.Sub(run.Start)
	d.Metrics.duration.WithLabelValues(j.Name).Observe(elapsed.Seconds())
	switch run.Result {
	case catalog.RunSuccess:
		d.Metrics.runs.WithLabelValues(j.Name, resultSuccess).Inc()
		d.Metrics.fromState(state)
		log.Info("run succeeded", "backup_id", out.BackupID, "database", out.Database, "seconds", elapsed.Seconds(), "attempts", run.Attempts)
		d.recovered(j.Name, previous.LastResult == catalog.RunFailure, Event{Event: EventJobRecovered, Job: j.Name, Time: run.End, Host: d.host, BackupID: out.BackupID})
	case catalog.RunFailure:
		d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
		d.Metrics.failure(j.Name, run.End)
		log.Error("run failed", "error", run.Error, "attempts", run.Attempts)
		d.alert(Event{Event: EventJobFailed, Job: j.Name, Time: run.End, Host: d.host, Error: run.Error})
	default:
		log.Warn("run stopped at shutdown; it runs again at the next start")
	}
	d.pruneRuns(ctx, log, j.Name)
	select {
	case d.refresh <- struct{}{}:
	default:
	}
	return slotDone
}

// observe turns what a drill or policy job found into metrics, and an
// objective that stopped holding into objective_failed.
func (d *Daemon) observe(j Job, out Outcome) {
	if dr := out.Drill; dr != nil {
		result := "failed"
		if dr.Passed {
			result = "passed"
		}
		d.Metrics.drillLast.WithLabelValues(dr.Process, result).Set(unix(dr.End))
		d.Metrics.drillDuration.WithLabelValues(dr.Process).Set(dr.Seconds)
	}
	if len(out.Objectives) > 0 {
		// The judgement as a whole: a process no longer configured
		// leaves no series behind.
		d.Metrics.objTarget.Reset()
		d.Metrics.objAchieved.Reset()
		d.Metrics.objMet.Reset()
	}
	for _, o := range out.Objectives {
		d.Metrics.objTarget.WithLabelValues(o.Process, o.Objective).Set(o.Target)
		d.Metrics.objAchieved.WithLabelValues(o.Process, o.Objective).Set(o.Achieved)
		met := 0.0
		if o.Met {
			met = 1
		}
		d.Metrics.objMet.WithLabelValues(o.Process, o.Objective).Set(met)
		key := o.Process + "/" + o.Objective
		d.mu.Lock()
		first := !o.Met && !d.failing[key]
		if o.Met {
			delete(d.failing, key)
		} else {
			d.failing[key] = true
		}
		d.mu.Unlock()
		if first {
			d.opt.Logger.Warn("a recovery objective does not hold", "job", j.Name, "process", o.Process, "objective", o.Objective, "reason", o.Reason)
			d.notify.send(Event{Event: EventObjectiveFailed, Job: j.Name, Time: d.opt.Clock.Now().UTC(), Host: d.host,
				Process: o.Process, Objective: o.Objective, Error: o.Reason})
		}
	}
}

func validRun(r catalog.JobRun) bool { return r.RunID != "" && !r.Start.IsZero() }

// record stores a run's record, whatever happened to the run's context.
func (d *Daemon) record(ctx context.Context, log *slog.Logger, run catalog.JobRun) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := catalog.PutJobRun(wctx, d.opt.Store, run); err != nil {
		log.Error("could not store the run's record", "error", err)
	}
}

// alert sends job_failed once per failure streak.
func (d *Daemon) alert(e Event) {
	d.mu.Lock()
	first := !d.alerted[e.Job]
	d.alerted[e.Job] = true
	d.mu.Unlock()
	if first {
		d.notify.send(e)
	}
}

// recovered sends job_recovered when a failure was alerted here, or the
// repository says the last run failed.
func (d *Daemon) recovered(job string, failedBefore bool, e Event) {
	d.mu.Lock()
	was := d.alerted[job]
	delete(d.alerted, job)
	d.mu.Unlock()
	if was || failedBefore {
		d.notify.send(e)
	}
}

// pruneRuns deletes the job's run records older than runHistory, once a
// day.
func (d *Daemon) pruneRuns(ctx context.Context, log *slog.Logger, job string) {
	now := d.opt.Clock.Now()
	d.mu.Lock()
	due := now.Sub(d.pruned[job]) > 24*time.Hour
	if due {
		d.pruned[job] = now
	}
	d.mu.Unlock()
	if !due {
		return
	}
	pctx, cancel := storeCtx(ctx)
	defer cancel()
	if n, err := catalog.DeleteJobRunsBefore(pctx, d.opt.Store, job, now.Add(-runHistory)); err != nil {
		log.Warn("could not delete old run records", "error", err)
	} else if n > 0 {
		log.Info("deleted old run records", "records", n)
	}
}

// attempts runs the job, retrying failures with backoff; each try gets
// the job's timeout.
func (d *Daemon) attempts(ctx context.Context, j Job, runID string, log *slog.Logger, n *int) (Outcome, error) {
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
		delay := schedule.Backoff(attempt, j.RetryDelay, 30*time.Minute)
		log.Warn("run failed: retrying", "error", err, "attempt", attempt, "retry_in", delay)
		select {
		case <-d.stopping:
			return out, errStopped
		case <-ctx.Done():
			return out, err
		case <-d.opt.Clock.After(delay):
		}
	}
}

// receiveHealthy is how long a receiver must have run for it to count as
// a success (it normally never exits).
const receiveHealthy = time.Minute

// receiveLoop keeps a wal-receive job running on one daemon: it takes the
// job's lease (or waits as a standby), runs the receiver until it stops,
// and restarts it with backoff. Shutdown stops it at once (it stores what
// it received).
func (d *Daemon) receiveLoop(ctx context.Context, j Job) {
	log := d.opt.Logger.With("job", j.Name)
	failures := 0
	if s, ok := d.readState(ctx, j); ok {
		d.Metrics.fromState(s)
		if s.LastResult == catalog.RunFailure {
			d.mu.Lock()
			d.alerted[j.Name] = true // a recovery is worth saying
			d.mu.Unlock()
		}
	}
	for ctx.Err() == nil {
		lctx, cancel := storeCtx(ctx)
		lease, err := catalog.AcquireJobLease(lctx, d.opt.Store, j.Name, d.opt.Holder, d.opt.Lease)
		cancel()
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
		if !d.begin() {
			lease.Release(ctx)
			return
		}
		run := catalog.JobRun{Job: j.Name, RunID: catalog.NewRecordID(), Type: j.Type, Start: d.opt.Clock.Now().UTC(), Host: d.opt.Holder, Attempts: 1}
		run.Scheduled = run.Start
		rlog := log.With("run_id", run.RunID)
		rlog.Info("receiver started", "slot", j.Slot)
		d.Metrics.running.WithLabelValues(j.Name).Set(1)
		rctx, stopRun := context.WithCancel(ctx)
		healthy := make(chan struct{})
		go func() {
			// Streaming for a while is a success (it recovered), and
			// keeps being one every minute after.
			for first := true; ; first = false {
				select {
				case <-rctx.Done():
					return
				case <-lease.LostCh():
					stopRun()
					return
				case <-d.opt.Clock.After(receiveHealthy):
				}
				now := d.opt.Clock.Now()
				d.Metrics.success(j.Name, now)
				if first {
					close(healthy)
					d.Metrics.runs.WithLabelValues(j.Name, resultSuccess).Inc()
					d.recovered(j.Name, false, Event{Event: EventJobRecovered, Job: j.Name, Time: now.UTC(), Host: d.host})
					d.writeReceiveState(rctx, rlog, j, run, catalog.RunSuccess, "")
				}
			}
		}()
		_, err = d.opt.Runner.Run(rctx, j, run.RunID)
		stopRun()
		d.Metrics.running.WithLabelValues(j.Name).Set(0)
		run.End = d.opt.Clock.Now().UTC()
		ran := run.End.Sub(run.Start)
		d.Metrics.duration.WithLabelValues(j.Name).Observe(ran.Seconds())
		wasHealthy := false
		select {
		case <-healthy:
			wasHealthy = true
		default:
		}
		switch {
		case ctx.Err() != nil:
			run.Result = resultCancelled
			rlog.Info("receiver stopped")
		case err == nil:
			run.Result = catalog.RunSuccess
			rlog.Warn("receiver exited: restarting it")
		default:
			run.Result, run.Error = catalog.RunFailure, err.Error()
			d.Metrics.runs.WithLabelValues(j.Name, resultFailure).Inc()
			d.Metrics.failure(j.Name, run.End)
			rlog.Error("receiver failed", "error", err, "ran", ran.Round(time.Second))
			d.alert(Event{Event: EventJobFailed, Job: j.Name, Time: run.End, Host: d.host, Error: err.Error()})
		}
		if lease.Lost() == nil {
			d.record(ctx, rlog, run)
			d.writeReceiveState(ctx, rlog, j, run, run.Result, run.Error)
		}
		lease.Release(ctx)
		d.runs.Done()
		if wasHealthy {
			failures = 0
		}
		failures++
		d.wait(ctx, schedule.Backoff(failures, time.Second, time.Minute))
	}
}

func (d *Daemon) writeReceiveState(ctx context.Context, log *slog.Logger, j Job, run catalog.JobRun, result, errText string) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	state, err := catalog.ReadJobState(wctx, d.opt.Store, j.Name)
	if errors.Is(err, catalog.ErrCorruptRecord) {
		state, err = catalog.JobState{Job: j.Name}, nil
	}
	if err == nil {
		now := d.opt.Clock.Now().UTC()
		state.LastScheduled, state.LastRunID, state.LastResult, state.Updated = run.Start, run.RunID, result, now
		switch result {
		case catalog.RunFailure:
			state.LastFailure, state.LastError = now, errText
		case catalog.RunSuccess:
			state.LastSuccess, state.LastError = now, ""
		}
		err = catalog.WriteJobState(wctx, d.opt.Store, state)
	}
	if err != nil {
		log.Error("could not store the job's state", "error", err)
	}
}
