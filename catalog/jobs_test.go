package catalog

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drctl/drctl/storage/storagetest"
)

func TestJobRunsAndState(t *testing.T) {
	st := storagetest.NewMemory()
	ctx := t.Context()
	s, err := ReadJobState(ctx, st, "odoo-dump")
	if err != nil || !s.LastScheduled.IsZero() {
		t.Fatalf("a job that never ran: %+v, %v", s, err)
	}
	base := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for i := range 6 {
		start := base.Add(time.Duration(i) * 20 * 24 * time.Hour) // across months
		r := JobRun{Job: "odoo-dump", RunID: fmt.Sprintf("run%08d", i), Scheduled: start, Start: start, End: start.Add(time.Minute), Result: RunSuccess}
		if err := PutJobRun(ctx, st, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := PutJobRun(ctx, st, JobRun{Job: "Bad/Name", RunID: "run00000001"}); err == nil {
		t.Fatal("a job name with a slash was accepted")
	}
	if err := PutJobRun(ctx, st, JobRun{Job: "x", RunID: "../../up"}); err == nil {
		t.Fatal("a run id with dots was accepted")
	}
	all, err := ListJobRuns(ctx, st, "odoo-dump", time.Time{}, time.Time{})
	if err != nil || len(all) != 6 || all[0].RunID != "run00000000" || all[5].RunID != "run00000005" {
		t.Fatalf("all runs: %d, %v", len(all), err)
	}
	// [day 20, day 60): runs 1 and 2.
	some, err := ListJobRuns(ctx, st, "odoo-dump", base.Add(20*24*time.Hour), base.Add(60*24*time.Hour))
	if err != nil || len(some) != 2 || some[0].RunID != "run00000001" || some[1].RunID != "run00000002" {
		t.Fatalf("runs in range: %+v, %v", some, err)
	}
	// A record that names another job is refused, not counted.
	st.Put(ctx, "jobs/odoo-dump/runs/20261127T100000.000Z-zzzzzzzz.json", bytesReader(`{"job":"other"}`))
	if _, err := ListJobRuns(ctx, st, "odoo-dump", time.Time{}, time.Time{}); err == nil {
		t.Fatal("a record of another job was listed")
	}
	want := JobState{Job: "odoo-dump", LastScheduled: base, LastResult: RunFailure, LastFailure: base, LastError: "boom"}
	if err := WriteJobState(ctx, st, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJobState(ctx, st, "odoo-dump")
	if err != nil || !got.LastScheduled.Equal(base) || got.LastError != "boom" || got.LastResult != RunFailure {
		t.Fatalf("state read back: %+v, %v", got, err)
	}
}

func TestJobLeaseIsExclusive(t *testing.T) {
	st := storagetest.NewMemory()
	ctx := t.Context()
	now := time.Now() // the store's clock too: leases are judged against it
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	opt := LeaseOptions{Now: clock, Interval: time.Hour}

	// Ten contenders at once: exactly one wins.
	var wins []*JobLease
	var wg sync.WaitGroup
	var wmu sync.Mutex
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := AcquireJobLease(ctx, st, "odoo-dump", fmt.Sprintf("pod-%d", i), opt)
			if err == nil {
				wmu.Lock()
				wins = append(wins, l)
				wmu.Unlock()
			} else if !errors.Is(err, ErrLeaseHeld) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d contenders won the lease", len(wins))
	}
	held := wins[0]
	if _, err := AcquireJobLease(ctx, st, "odoo-dump", "pod-late", opt); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("a held lease was taken: %v", err)
	}
	// Released: the next run takes it at once.
	held.Release(ctx)
	next, err := AcquireJobLease(ctx, st, "odoo-dump", "pod-b", opt)
	if err != nil {
		t.Fatalf("a released lease could not be taken: %v", err)
	}
	// A holder that crashed (never renewed, never released): live for its
	// TTL and a TTL of grace, then taken over; the old holder finds out.
	mu.Lock()
	now = now.Add(JobLeaseTTL + JobLeaseTTL/2)
	mu.Unlock()
	if _, err := AcquireJobLease(ctx, st, "odoo-dump", "pod-c", opt); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("a lease within its grace was taken: %v", err)
	}
	mu.Lock()
	now = now.Add(2 * JobLeaseTTL)
	mu.Unlock()
	third, err := AcquireJobLease(ctx, st, "odoo-dump", "pod-c", opt)
	if err != nil {
		t.Fatalf("an expired lease was not taken over: %v", err)
	}
	if err := next.renew(ctx); err == nil || next.Lost() == nil {
		t.Fatal("the stalled holder did not learn it lost the lease")
	}
	next.Release(ctx)
	third.Release(ctx)
	// A forged lease that claims to be live for a year counts from its
	// object's time.
	st.Put(ctx, "jobs/odoo-dump/lease/0000000099.json", bytesReader(fmt.Sprintf(`{"name":"odoo-dump","kind":"job","host":"evil","expires":%q,"ttl_seconds":60}`, now.AddDate(1, 0, 0).Format(time.RFC3339))))
	mu.Lock()
	now = now.Add(3 * JobLeaseTTL)
	mu.Unlock()
	fourth, err := AcquireJobLease(ctx, st, "odoo-dump", "pod-d", opt)
	if err != nil {
		t.Fatalf("a forged far-future lease blocked the job: %v", err)
	}
	fourth.Release(ctx)
	// Old numbers are cleaned up as leases are taken.
	objs, _ := st.List(ctx, "jobs/odoo-dump/lease/")
	if len(objs) > 3 {
		t.Fatalf("%d lease objects kept", len(objs))
	}
}

func bytesReader(s string) *strings.Reader { return strings.NewReader(s) }
