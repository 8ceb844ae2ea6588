package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/clock"
	"github.com/drctl/drctl/engine/schedule"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/storagetest"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 30, 0, time.UTC)

// fakeRunner records the runs it is asked for; fn decides each outcome.
type fakeRunner struct {
	clock *clock.Fake
	mu    sync.Mutex
	calls []call
	fn    func(ctx context.Context, j Job, n int) (Outcome, error)
}

type call struct {
	job string
	at  time.Time
}

func (r *fakeRunner) Run(ctx context.Context, j Job, runID string) (Outcome, error) {
	r.mu.Lock()
	r.calls = append(r.calls, call{j.Name, r.clock.Now()})
	n := len(r.calls)
	fn := r.fn
	r.mu.Unlock()
	if fn != nil {
		return fn(ctx, j, n)
	}
	return Outcome{BackupID: fmt.Sprintf("b%d", n), StoredBytes: 100, RawBytes: 1000}, nil
}

func (r *fakeRunner) count(job string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c.job == job {
			n++
		}
	}
	return n
}

func job(t *testing.T, name, spec string) Job {
	t.Helper()
	s, err := schedule.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	return Job{Name: name, Type: TypeBackup, Schedule: s, Timeout: time.Hour, RetryDelay: 30 * time.Second}
}

type harness struct {
	t      *testing.T
	clock  *clock.Fake
	store  storage.Store
	runner *fakeRunner
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, clk *clock.Fake, st storage.Store, cfg *Config, runner *fakeRunner, holder string, hooks *http.Client) *harness {
	t.Helper()
	if cfg.Refresh == 0 {
		cfg.Refresh = time.Hour
	}
	d := New(cfg, Options{Store: st, Runner: runner, Clock: clk, Holder: holder, Grace: 20 * time.Second,
		Rand: func(n int64) int64 { return n - 1 }, HTTPClient: hooks,
		Lease: catalog.LeaseOptions{Interval: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	base := clk.Waiters()
	h := &harness{t: t, clock: clk, store: st, runner: runner, d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- d.Run(ctx) }()
	t.Cleanup(h.stop)
	// Every job loop, the heartbeat and the refresh wait on the clock
	// before time moves.
	if !clk.WaitForWaiters(base+len(cfg.Jobs)+2, 10*time.Second) {
		t.Fatal("the daemon's loops did not start")
	}
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	// Shutdown waits on the fake clock for the grace period.
	for {
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Error(err)
			}
			return
		default:
			h.clock.Advance(time.Second)
			time.Sleep(time.Millisecond)
		}
	}
}

// advanceUntil moves the fake clock in steps until cond holds (the
// goroutines get a moment of real time between steps).
func advanceUntil(t *testing.T, clk *clock.Fake, step time.Duration, limit int, cond func() bool) {
	t.Helper()
	deadline := clk.Now().Add(step * time.Duration(limit))
	for clk.Now().Before(deadline) {
		if cond() {
			return
		}
		// To the next wake-up, if that comes sooner than a step.
		d := step
		if at, ok := clk.NextWake(); ok && at.After(clk.Now()) && at.Sub(clk.Now()) < step {
			d = at.Sub(clk.Now())
		}
		clk.Advance(d)
		for range 10 {
			if cond() {
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	t.Fatalf("condition not reached after %d steps of %s (fake time %s)", limit, step, clk.Now())
}

// eventSink is a webhook receiver that keeps the events' names.
type eventSink struct {
	srv    *httptest.Server
	mu     sync.Mutex
	events []string
}

func newEventSink(t *testing.T) *eventSink {
	s := &eventSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var e Event
		json.NewDecoder(req.Body).Decode(&e)
		s.mu.Lock()
		s.events = append(s.events, e.Event)
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *eventSink) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

func runs(t *testing.T, st storage.Store, name string) []catalog.JobRun {
	t.Helper()
	r, err := catalog.ListJobRuns(context.Background(), st, name, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRunsAtScheduledTimes(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk}
	h := start(t, clk, st, &Config{Jobs: []Job{job(t, "dump", "@every 1m")}}, r, "pod-a", nil)
	advanceUntil(t, clk, 5*time.Second, 200, func() bool { return len(runs(t, st, "dump")) >= 3 })
	h.stop()
	got := runs(t, st, "dump")
	for i, run := range got[:3] {
		want := t0.Truncate(time.Minute).Add(time.Duration(i+1) * time.Minute)
		if !run.Scheduled.Equal(want) || run.Result != catalog.RunSuccess || run.Start.Before(want) || run.Start.Sub(want) > 5*time.Second {
			t.Fatalf("run %d: %+v, want scheduled at %s", i, run, want)
		}
	}
	if v := testutil.ToFloat64(h.d.Metrics.runs.WithLabelValues("dump", "success")); v < 3 {
		t.Fatalf("success count %v", v)
	}
	s, _ := catalog.ReadJobState(context.Background(), st, "dump")
	if s.LastResult != catalog.RunSuccess || s.StoredBytes != 100 || s.LastBackupID == "" {
		t.Fatalf("state %+v", s)
	}
}

// Jitter delays each run by up to its bound, never more.
func TestJitterDelaysRuns(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk}
	j := job(t, "dump", "@every 10m")
	j.Jitter = 2 * time.Minute
	start(t, clk, st, &Config{Jobs: []Job{j}}, r, "pod-a", nil) // Rand returns the maximum
	advanceUntil(t, clk, 10*time.Second, 200, func() bool { return r.count("dump") >= 1 })
	r.mu.Lock()
	at := r.calls[0].at
	r.mu.Unlock()
	want := t0.Truncate(10 * time.Minute).Add(12 * time.Minute)
	if at.Before(want) || at.Sub(want) > 10*time.Second {
		t.Fatalf("ran at %s, want %s (10m + 2m of jitter)", at, want)
	}
}

// A job whose time passed while no daemon ran runs once at start; missed
// by more than one period, it also raises job_missed, signed.
func TestMissedRunsAfterDowntime(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	var sigs []string
	var bodies [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var e Event
		json.Unmarshal(body, &e)
		mu.Lock()
		events, sigs, bodies = append(events, e), append(sigs, req.Header.Get(SignatureHeader)), append(bodies, body)
		mu.Unlock()
	}))
	defer srv.Close()
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	// It last ran 3h10m ago, hourly: three runs were missed.
	last := t0.Add(-3*time.Hour - 10*time.Minute).Truncate(time.Hour)
	catalog.WriteJobState(context.Background(), st, catalog.JobState{Job: "dump", LastScheduled: last, LastResult: catalog.RunSuccess})
	r := &fakeRunner{clock: clk}
	cfg := &Config{Jobs: []Job{job(t, "dump", "@hourly")}, Notify: Notify{Webhooks: []Webhook{{URL: srv.URL + "/hook", Secret: []byte("k")}}}}
	h := start(t, clk, st, cfg, r, "pod-a", srv.Client())
	advanceUntil(t, clk, time.Second, 50, func() bool { return len(runs(t, st, "dump")) >= 1 })
	got := runs(t, st, "dump")
	if len(got) != 1 || !got[0].Scheduled.Equal(t0.Truncate(time.Hour)) {
		t.Fatalf("catch-up runs: %+v, want one for %s", got, t0.Truncate(time.Hour))
	}
	advanceUntil(t, clk, time.Second, 50, func() bool { mu.Lock(); defer mu.Unlock(); return len(events) >= 1 })
	// Nothing more until the next hour.
	clk.Advance(20 * time.Minute)
	time.Sleep(20 * time.Millisecond)
	if n := r.count("dump"); n != 1 {
		t.Fatalf("%d runs before the next hour", n)
	}
	h.stop()
	mu.Lock()
	defer mu.Unlock()
	if events[0].Event != EventJobMissed || events[0].Missed != 4 || events[0].Job != "dump" {
		t.Fatalf("event %+v", events[0])
	}
	if sigs[0] != Sign([]byte("k"), bodies[0]) {
		t.Fatalf("signature %q does not match the body", sigs[0])
	}
}

// A failing run is retried with backoff; job_failed when every try failed,
// job_recovered when it succeeds again.
func TestRetriesAndAlerts(t *testing.T) {
	sink := newEventSink(t)
	srv := sink.srv
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk, fn: func(_ context.Context, _ Job, n int) (Outcome, error) {
		if n <= 6 { // the first two runs' three tries each
			return Outcome{}, errors.New("connection refused")
		}
		return Outcome{BackupID: "ok"}, nil
	}}
	j := job(t, "dump", "@every 10m")
	j.Retries = 2
	h := start(t, clk, st, &Config{Jobs: []Job{j}, Notify: Notify{Webhooks: []Webhook{{URL: srv.URL}}}}, r, "pod-a", srv.Client())
	advanceUntil(t, clk, 5*time.Second, 2000, func() bool { return len(runs(t, st, "dump")) >= 1 })
	first := runs(t, st, "dump")[0]
	r.mu.Lock()
	tries := append([]call(nil), r.calls...)
	r.mu.Unlock()
	if first.Result != catalog.RunFailure || first.Attempts != 3 || !strings.Contains(first.Error, "connection refused") || len(tries) != 3 {
		t.Fatalf("first run %+v after %d tries", first, len(tries))
	}
	// Backoff: 30 s, then 60 s.
	if d := tries[1].at.Sub(tries[0].at); d < 30*time.Second || d > 35*time.Second {
		t.Fatalf("first retry after %s", d)
	}
	if d := tries[2].at.Sub(tries[1].at); d < 60*time.Second || d > 65*time.Second {
		t.Fatalf("second retry after %s", d)
	}
	// The metrics follow the record.
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(h.d.Metrics.runs.WithLabelValues("dump", "failure")) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if testutil.ToFloat64(h.d.Metrics.runs.WithLabelValues("dump", "failure")) != 1 || testutil.ToFloat64(h.d.Metrics.lastFailure.WithLabelValues("dump")) == 0 {
		t.Fatal("no failure metric")
	}
	advanceUntil(t, clk, 30*time.Second, 200, func() bool { return len(runs(t, st, "dump")) >= 3 })
	advanceUntil(t, clk, time.Second, 100, func() bool { return len(sink.names()) >= 2 })
	h.stop()
	if got := runs(t, st, "dump"); got[1].Result != catalog.RunFailure || got[2].Result != catalog.RunSuccess {
		t.Fatalf("runs %+v", got)
	}
	// One job_failed for the two failed runs in a row.
	if events := sink.names(); strings.Join(events, ",") != "job_failed,job_recovered" {
		t.Fatalf("events %v", events)
	}
}

// Two daemons on one repository: every scheduled time runs exactly once,
// and no two runs overlap.
func TestTwoDaemonsRunEachTimeOnce(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	var mu sync.Mutex
	running := 0
	overlap := false
	slow := func(ctx context.Context, _ Job, _ int) (Outcome, error) {
		mu.Lock()
		running++
		overlap = overlap || running > 1
		mu.Unlock()
		time.Sleep(2 * time.Millisecond) // real time: the other daemon tries meanwhile
		mu.Lock()
		running--
		mu.Unlock()
		return Outcome{}, nil
	}
	ra, rb := &fakeRunner{clock: clk, fn: slow}, &fakeRunner{clock: clk, fn: slow}
	a := start(t, clk, st, &Config{Jobs: []Job{job(t, "dump", "@every 1m")}}, ra, "pod-a", nil)
	b := start(t, clk, st, &Config{Jobs: []Job{job(t, "dump", "@every 1m")}}, rb, "pod-b", nil)
	advanceUntil(t, clk, 10*time.Second, 400, func() bool { return len(runs(t, st, "dump")) >= 10 })
	a.stop()
	b.stop()
	got := runs(t, st, "dump")
	seen := map[time.Time]bool{}
	for _, r := range got {
		if seen[r.Scheduled] {
			t.Fatalf("scheduled time %s ran twice", r.Scheduled)
		}
		seen[r.Scheduled] = true
	}
	for i := 1; i <= 10; i++ {
		if !seen[t0.Truncate(time.Minute).Add(time.Duration(i)*time.Minute)] {
			t.Fatalf("scheduled time %d never ran (runs: %d)", i, len(got))
		}
	}
	if overlap {
		t.Fatal("two runs of the job overlapped")
	}
	skipped := testutil.ToFloat64(a.d.Metrics.runs.WithLabelValues("dump", "skipped")) + testutil.ToFloat64(b.d.Metrics.runs.WithLabelValues("dump", "skipped"))
	if ra.count("dump")+rb.count("dump") != len(got) || skipped == 0 {
		t.Fatalf("a ran %d, b %d, skipped %v, records %d", ra.count("dump"), rb.count("dump"), skipped, len(got))
	}
}

// SIGTERM while a job runs: it gets the grace period, then is cancelled;
// the cancelled run is recorded as such, and the next start runs it again.
func TestShutdownCancelsAfterGraceAndRunsAgain(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	r := &fakeRunner{clock: clk, fn: func(ctx context.Context, _ Job, n int) (Outcome, error) {
		if n > 1 {
			return Outcome{BackupID: "again"}, nil
		}
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- struct{}{}
		return Outcome{}, ctx.Err()
	}}
	cfg := &Config{Jobs: []Job{job(t, "base", "@every 1h")}}
	h := start(t, clk, st, cfg, r, "pod-a", nil)
	advanceUntil(t, clk, time.Minute, 100, func() bool { return len(started) == 1 })
	h.cancel()
	h.cancel = nil
	<-h.d.stopping
	time.Sleep(20 * time.Millisecond) // the grace timer starts
	stopAt := clk.Now()
	// Within the grace period the run is left alone.
	clk.Advance(10 * time.Second)
	time.Sleep(20 * time.Millisecond)
	if len(cancelled) != 0 {
		t.Fatal("the run was cancelled before the grace period ended")
	}
	advanceUntil(t, clk, time.Second, 100, func() bool { return len(cancelled) == 1 })
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon did not stop after the grace period")
	}
	if waited := clk.Now().Sub(stopAt); waited < 20*time.Second || waited > 25*time.Second {
		t.Fatalf("cancelled %s after the stop", waited)
	}
	got := runs(t, st, "base")
	if len(got) != 1 || got[0].Result != "cancelled" {
		t.Fatalf("records %+v", got)
	}
	if l, err := st.List(context.Background(), "jobs/base/lease/"); err != nil || len(l) != 1 {
		t.Fatalf("lease objects %v, %v", l, err)
	} else if state, _, _ := readLeaseForTest(st, l[0].Key); !state {
		t.Fatal("the job's lease was not released")
	}
	// The next start runs it at once.
	h2 := start(t, clk, st, cfg, r, "pod-a", nil)
	advanceUntil(t, clk, time.Second, 50, func() bool { return len(runs(t, st, "base")) >= 2 })
	h2.stop()
	if got := runs(t, st, "base"); got[1].Result != catalog.RunSuccess || !got[1].Scheduled.Equal(got[0].Scheduled) {
		t.Fatalf("after restart: %+v", got[1])
	}
}

func readLeaseForTest(st storage.Store, key string) (released bool, l catalog.Lease, err error) {
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		return false, l, err
	}
	defer rc.Close()
	err = json.NewDecoder(rc).Decode(&l)
	return l.Released, l, err
}

// A reload changes a job's schedule, adds and removes jobs.
func TestReload(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk}
	h := start(t, clk, st, &Config{Jobs: []Job{job(t, "dump", "@every 1h"), job(t, "old", "@every 1h")}}, r, "pod-a", nil)
	clk.WaitForWaiters(3, 5*time.Second)
	h.d.Reload(context.Background(), &Config{Refresh: time.Hour, Jobs: []Job{job(t, "dump", "@every 5m"), job(t, "new", "@every 10m")}})
	advanceUntil(t, clk, 30*time.Second, 100, func() bool { return r.count("new") >= 1 && r.count("dump") >= 2 })
	h.stop()
	if n := r.count("dump"); n < 2 || n > 3 {
		t.Fatalf("dump ran %d times in 10 minutes after its schedule became every 5m", n)
	}
	if r.count("old") != 0 {
		t.Fatal("a removed job ran")
	}
	if got := testutil.CollectAndCount(h.d.Metrics.running); got != 2 {
		t.Fatalf("running series for %d jobs, want 2 (the removed job's are gone)", got)
	}
}

// A daemon killed during a run leaves the job's state "running": the next
// daemon to hold the job records that run as failed (job_failed) and runs
// that time again.
func TestInterruptedRunIsRedone(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	slot := t0.Truncate(time.Hour)
	catalog.WriteJobState(context.Background(), st, catalog.JobState{Job: "base", LastScheduled: slot, LastResult: "running",
		LastRunID: "deadbeefdeadbeef", Updated: slot.Add(10 * time.Second)})
	r := &fakeRunner{clock: clk}
	h := start(t, clk, st, &Config{Jobs: []Job{job(t, "base", "@hourly")}}, r, "pod-b", nil)
	advanceUntil(t, clk, time.Second, 60, func() bool { return len(runs(t, st, "base")) >= 2 })
	h.stop()
	got := runs(t, st, "base")
	if got[0].RunID != "deadbeefdeadbeef" || got[0].Result != catalog.RunFailure || !strings.Contains(got[0].Error, "stopped without finishing") {
		t.Fatalf("the interrupted run: %+v", got[0])
	}
	if got[1].Result != catalog.RunSuccess || !got[1].Scheduled.Equal(slot) {
		t.Fatalf("the redone run: %+v", got[1])
	}
	if testutil.ToFloat64(h.d.Metrics.runs.WithLabelValues("base", "failure")) != 1 {
		t.Fatal("the interrupted run is not counted as a failure")
	}
}

// SIGTERM while a failed run waits to be retried: the run is recorded as
// stopped (not failed) and runs again at the next start.
func TestStopDuringRetryWait(t *testing.T) {
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk, fn: func(context.Context, Job, int) (Outcome, error) { return Outcome{}, errors.New("boom") }}
	j := job(t, "dump", "@every 1m")
	j.Retries, j.RetryDelay = 3, 10*time.Minute
	h := start(t, clk, st, &Config{Jobs: []Job{j}}, r, "pod-a", nil)
	advanceUntil(t, clk, time.Second, 120, func() bool { return r.count("dump") == 1 })
	h.stop()
	got := runs(t, st, "dump")
	if len(got) != 1 || got[0].Result != "cancelled" {
		t.Fatalf("runs %+v", got)
	}
	if s, _ := catalog.ReadJobState(context.Background(), st, "dump"); s.LastResult != "cancelled" {
		t.Fatalf("state %+v", s)
	}
}

// A reload that changes a job's schedule does not take the old times for
// missed ones.
func TestReloadDoesNotCatchUp(t *testing.T) {
	sink := newEventSink(t)
	srv := sink.srv
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	catalog.WriteJobState(context.Background(), st, catalog.JobState{Job: "dump", LastScheduled: t0.Add(-time.Hour).Truncate(24 * time.Hour), LastResult: catalog.RunSuccess})
	r := &fakeRunner{clock: clk}
	hooks := Notify{Webhooks: []Webhook{{URL: srv.URL}}}
	h := start(t, clk, st, &Config{Jobs: []Job{job(t, "dump", "@daily")}, Notify: hooks}, r, "pod-a", srv.Client())
	h.d.Reload(context.Background(), &Config{Refresh: time.Hour, Jobs: []Job{job(t, "dump", "@every 1m")}, Notify: hooks})
	advanceUntil(t, clk, 10*time.Second, 30, func() bool { return r.count("dump") >= 1 })
	h.stop()
	if events := sink.names(); len(events) != 0 {
		t.Fatalf("events after a reload: %v", events)
	}
}

// A policy job's judgement: the objective metrics, and objective_failed
// once while an objective keeps failing.
func TestObjectiveMetricsAndAlerts(t *testing.T) {
	sink := newEventSink(t)
	clk := clock.NewFake(t0)
	st := storagetest.NewMemory()
	st.Now = clk.Now
	r := &fakeRunner{clock: clk, fn: func(_ context.Context, _ Job, n int) (Outcome, error) {
		met := n >= 4 // fails on the first three judgements
		return Outcome{Objectives: []ObjectiveOutcome{{Process: "pos-sync", Objective: "rpo", Target: 60, Achieved: 90, Met: met, Reason: "lag"}}}, nil
	}}
	j := job(t, "objectives", "@every 1m")
	j.Type = TypePolicy
	h := start(t, clk, st, &Config{Jobs: []Job{j}, Notify: Notify{Webhooks: []Webhook{{URL: sink.srv.URL}}}}, r, "pod-a", sink.srv.Client())
	advanceUntil(t, clk, 10*time.Second, 100, func() bool { return r.count("objectives") >= 2 })
	if v := testutil.ToFloat64(h.d.Metrics.objMet.WithLabelValues("pos-sync", "rpo")); v != 0 {
		t.Fatalf("objective met = %v while it fails", v)
	}
	if v := testutil.ToFloat64(h.d.Metrics.objAchieved.WithLabelValues("pos-sync", "rpo")); v != 90 {
		t.Fatalf("achieved = %v", v)
	}
	advanceUntil(t, clk, 10*time.Second, 100, func() bool { return r.count("objectives") >= 5 })
	advanceUntil(t, clk, time.Second, 10, func() bool { return testutil.ToFloat64(h.d.Metrics.objMet.WithLabelValues("pos-sync", "rpo")) == 1 })
	h.stop()
	if events := sink.names(); strings.Join(events, ",") != "objective_failed" {
		t.Fatalf("events %v: want one objective_failed for three failing judgements", events)
	}
}
