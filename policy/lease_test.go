package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/policy"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/faulty"
	"github.com/drctl/drctl/storage/filestore"
)

// clock is an injected clock tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// unfinished writes the data of a backup that has no manifest yet.
func unfinished(t *testing.T, st storage.Store, id string) []string {
	t.Helper()
	keys := []string{catalog.ObjectKey(id, "base.tar.zst.age"), catalog.ObjectKey(id, "16400.tar.zst.age")}
	for _, k := range keys {
		if err := st.Put(t.Context(), k, strings.NewReader("half of a large cluster")); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func present(t *testing.T, st storage.Store, keys ...string) bool {
	t.Helper()
	for _, k := range keys {
		if _, err := st.Stat(context.Background(), k); err != nil {
			return false
		}
	}
	return true
}

// waitRenewed waits (bounded) until the lease records a renewal at or
// after when.
func waitRenewed(t *testing.T, st storage.Store, name string, when time.Time) {
	t.Helper()
	for i := 0; i < 500; i++ {
		rc, err := st.Get(t.Context(), catalog.LeaseKey(name))
		if err == nil {
			var l catalog.Lease
			err = json.NewDecoder(rc).Decode(&l)
			rc.Close()
			if err == nil && !l.Renewed.Before(when) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("lease %s not renewed at %v", name, when)
}

// A base backup that has run for longer than a day holds a renewed lease:
// neither a prune nor the leftover cleanup of a new backup's start touches
// its objects. Once its lease expires (the writer was killed), they go.
func TestLiveWriterIsNeverCleanedUp(t *testing.T) {
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)}
	id := catalog.NewID(clk.Now())
	lease, err := catalog.AcquireLease(t.Context(), st, id, catalog.LeaseBaseBackup, catalog.LeaseOptions{Interval: 5 * time.Millisecond, TTL: 2 * time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	keys := unfinished(t, st, id)
	// 25 hours later, still running, its lease renewed all along.
	for h := 0; h < 25; h++ {
		clk.Add(time.Hour)
		waitRenewed(t, st, id, clk.Now())
	}
	plan, err := policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, clk.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Orphans) != 0 || !slices.Equal(plan.Unfinished, []string{id}) {
		t.Fatalf("orphans %v, unfinished %v: the live backup must be unfinished, not an orphan", plan.Orphans, plan.Unfinished)
	}
	if err := policy.Prune(t.Context(), st, plan); err != nil {
		t.Fatal(err)
	}
	reaper := catalog.NewReaper(st, clk.Now())
	for _, k := range keys {
		if reaper.LeftoverDead(t.Context(), k, clk.Now().Add(-25*time.Hour)) {
			t.Fatalf("the leftover cleanup would remove %s of a live writer", k)
		}
	}
	if !present(t, st, keys...) {
		t.Fatal("the live backup's objects were deleted")
	}
	if err := lease.Check(); err != nil {
		t.Fatalf("a renewed lease fails its check: %v", err)
	}

	// The writer dies: no more renewals. Within the TTL it still counts
	// as alive; past it, its leftovers are orphans and are removed.
	lease.Release(t.Context()) // stops renewing (and removes the lease)
	writeLease(t, st, catalog.Lease{Name: id, Kind: catalog.LeaseBaseBackup, Renewed: clk.Now(), Expires: clk.Now().Add(catalog.LeaseTTL), TTLSeconds: catalog.LeaseTTL.Seconds()})
	clk.Add(catalog.LeaseTTL * 3 / 2)
	if plan, _ := policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, clk.Now(), nil); len(plan.Orphans) != 0 {
		t.Fatalf("orphans %v within the lease's TTL and its grace", plan.Orphans)
	}
	// The store's clock says the lease was written just now: the writer's
	// clock alone cannot expire it. Judge from an hour later.
	later := time.Now().Add(time.Hour)
	if later.Before(clk.Now()) {
		later = clk.Now()
	}
	clk.now = later.Add(2 * catalog.LeaseTTL)
	plan, err = policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, clk.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(plan.Orphans, []string{id}) {
		t.Fatalf("orphans %v after the lease expired, want %s", plan.Orphans, id)
	}
	if err := policy.Prune(t.Context(), st, plan); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(keys, catalog.LeaseKey(id)) {
		if present(t, st, k) {
			t.Fatalf("%s survived the prune of a dead writer's leftovers", k)
		}
	}
}

func writeLease(t *testing.T, st storage.Store, l catalog.Lease) {
	t.Helper()
	b, _ := json.Marshal(l)
	if err := st.Put(t.Context(), catalog.LeaseKey(l.Name), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

// errUnavailable is what an S3 server's 503 looks like to the engine.
var errUnavailable = errors.New("503 Service Unavailable")

// A transient error while checking a leftover's manifest or lease is never
// taken for "absent": nothing is deleted, and the error is reported.
func TestTransientErrorsDeleteNothing(t *testing.T) {
	base, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &faulty.Store{Store: base}
	// A killed backup from a year ago, lease long expired: an orphan.
	old := time.Date(2025, 11, 1, 8, 0, 0, 0, time.UTC)
	id := catalog.NewID(old)
	keys := unfinished(t, st, id)
	writeLease(t, st, catalog.Lease{Name: id, Renewed: old, Expires: old.Add(time.Minute), TTLSeconds: 60})
	now := time.Now().Add(time.Hour)
	for _, failing := range []string{catalog.ManifestKey(id), catalog.LeaseKey(id)} {
		plan, err := policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, now, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(plan.Orphans, []string{id}) {
			t.Fatalf("orphans %v, want %s", plan.Orphans, id)
		}
		// The server answers 503 between the plan and the deletion.
		st.SetFail(func(method, key string) error {
			if method == "Stat" && key == failing {
				return errUnavailable
			}
			return nil
		})
		err = policy.Prune(t.Context(), st, plan)
		st.SetFail(nil)
		if !errors.Is(err, errUnavailable) {
			t.Fatalf("Stat of %s failing: prune returned %v, want the 503 reported", failing, err)
		}
		if !present(t, st, append(keys, catalog.LeaseKey(id))...) {
			t.Fatalf("Stat of %s failing: objects were deleted", failing)
		}
	}
	// A 503 while planning keeps the backup out of the orphans.
	st.SetFail(func(method, key string) error {
		if method == "Stat" && key == catalog.LeaseKey(id) {
			return errUnavailable
		}
		return nil
	})
	plan, err := policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Orphans) != 0 || !slices.Equal(plan.Unfinished, []string{id}) || len(plan.Warnings) != 1 {
		t.Fatalf("with the lease unreadable: orphans %v, unfinished %v, warnings %v", plan.Orphans, plan.Unfinished, plan.Warnings)
	}
	st.SetFail(nil)
	// Healthy again: the orphan goes.
	if plan, err = policy.PlanPrune(t.Context(), st, policy.Retention{KeepLast: 1}, now, nil); err != nil {
		t.Fatal(err)
	}
	if err := policy.Prune(t.Context(), st, plan); err != nil {
		t.Fatal(err)
	}
	if present(t, st, keys[0]) {
		t.Fatal("the orphan survived a healthy prune")
	}
}

// A writer whose lease could not be renewed for its TTL refuses to commit:
// a cleanup may have taken its objects.
func TestLostLeaseFailsCheck(t *testing.T) {
	st, clk, lease := quickLease(t)
	st.SetFail(func(method, key string) error {
		if method == "Put" {
			return errUnavailable
		}
		return nil
	})
	clk.Add(2 * time.Minute)
	// Renewals keep failing; poll (bounded) until one has been tried.
	var checkErr error
	for i := 0; i < 500; i++ {
		if checkErr = lease.Check(); checkErr != nil && strings.Contains(checkErr.Error(), "503") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if checkErr == nil || !strings.Contains(checkErr.Error(), "503") {
		t.Fatalf("lease not renewed for twice its TTL: Check = %v", checkErr)
	}
	st.SetFail(nil)
}

// A writer whose lease once went unrenewed for too long fails its check
// for good, even after a later renewal succeeded.
func TestLapsedLeaseStaysLapsed(t *testing.T) {
	st, clk, lease := quickLease(t)
	clk.Add(2 * time.Minute) // a stall: the next renewal comes too late
	for i := 0; i < 500 && lease.Check() == nil; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	waitRenewed(t, st, lease.Name(), clk.Now())
	// The writer records its renewal in memory just after the store has
	// it: poll (bounded) for the lapse to be reported as past, and never
	// as healthy.
	var err error
	for i := 0; i < 500; i++ {
		if err = lease.Check(); err == nil || strings.Contains(err.Error(), "without renewal") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err == nil || !strings.Contains(err.Error(), "without renewal") {
		t.Fatalf("after a lapse and a renewal: Check = %v", err)
	}
}

// quickLease holds a lease renewed every 5 ms with a one-minute expiry, on
// an injected clock, in a store that can be made to fail.
func quickLease(t *testing.T) (*faulty.Store, *clock, *catalog.HeldLease) {
	t.Helper()
	base, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &faulty.Store{Store: base}
	clk := &clock{now: time.Now()}
	lease, err := catalog.AcquireLease(t.Context(), st, catalog.NewID(clk.Now()), catalog.LeaseBackup, catalog.LeaseOptions{Interval: 5 * time.Millisecond, TTL: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.SetFail(nil); lease.Release(context.Background()) })
	return st, clk, lease
}
