package policy_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/policy"
	"github.com/drctl/drctl/storage/storagetest"
)

// commitAt writes a complete backup of kind that ended at end.
func commitAt(t *testing.T, st *storagetest.Memory, kind string, end time.Time, seg int) string {
	t.Helper()
	id := catalog.NewID(end.Add(-time.Minute))
	key := catalog.ObjectKey(id, "data")
	st.Put(context.Background(), key, strings.NewReader("x"))
	m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: kind, Database: "shop", StartTime: end.Add(-time.Minute), EndTime: end,
		Encryption: catalog.Encryption{Method: "none"},
		Objects:    []catalog.Object{{Key: key, Role: catalog.RoleDump, Size: 1, SHA256: strings.Repeat("0", 64)}}}
	if kind == catalog.KindPhysical {
		m.Objects[0].Role = catalog.RoleTar
		name := fmt.Sprintf("0000000100000000000000%02X", seg)
		m.Physical = &catalog.Physical{StartLSN: fmt.Sprintf("0/%X000028", seg), StopLSN: fmt.Sprintf("0/%X000100", seg),
			StartSegment: name, StopSegment: name, WALSegmentSize: 16 << 20, StartTimeline: 1, StopTimeline: 1}
	}
	if err := catalog.Commit(context.Background(), st, m, nil); err != nil {
		t.Fatal(err)
	}
	return id
}

// --keep-within keeps every backup of the window and, for base backups,
// the one the window starts from (PITR to the window's first moment needs
// it); WAL goes only before that one.
func TestKeepWithin(t *testing.T) {
	st := storagetest.NewMemory()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	ages := []time.Duration{72 * time.Hour, 48 * time.Hour, 30 * time.Hour, 12 * time.Hour, time.Hour}
	phys, logi := map[time.Duration]string{}, map[time.Duration]string{}
	for i, age := range ages {
		phys[age] = commitAt(t, st, catalog.KindPhysical, now.Add(-age), 2+i*2)
		logi[age] = commitAt(t, st, catalog.KindLogical, now.Add(-age).Add(time.Second), 0)
	}
	for i := 1; i <= 12; i++ { // WAL from segment 1 on
		st.Put(context.Background(), fmt.Sprintf("wal/0000000100000000000000%02X.%s.zst", i, strings.Repeat("a", 32)), strings.NewReader("w"))
	}
	plan, err := policy.PlanPrune(context.Background(), st, policy.Retention{KeepWithin: 24 * time.Hour}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	var deleted, kept []string
	reasons := map[string]string{}
	for _, d := range plan.Delete {
		deleted = append(deleted, d.ID)
	}
	for _, d := range plan.Keep {
		kept = append(kept, d.ID)
		reasons[d.ID] = d.Reason
	}
	want := []string{phys[72*time.Hour], phys[48*time.Hour], logi[72*time.Hour], logi[48*time.Hour], logi[30*time.Hour]}
	slices.Sort(want)
	slices.Sort(deleted)
	if !slices.Equal(deleted, want) || len(kept)+len(deleted) != 2*len(ages) {
		t.Fatalf("deleted %v, want %v (kept %v)", deleted, want, reasons)
	}
	if r := reasons[phys[30*time.Hour]]; !strings.Contains(r, "base of the") {
		t.Fatalf("the base backup the window starts from is kept for %q", r)
	}
	// WAL before the 30-hour-old base backup's start (segment 6) goes.
	if plan.WALKeepFrom != "000000010000000000000006" || plan.WALDeleteCount != 5 {
		t.Fatalf("WAL kept from %s, %d deleted; want from 000000010000000000000006, 5 deleted", plan.WALKeepFrom, plan.WALDeleteCount)
	}
}
