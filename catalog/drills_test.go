package catalog_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage/storagetest"
)

// With allowed signers, a drill or gate record planted without a
// signature is left out (and named); an unreadable one never stops the
// readers.
func TestEvidenceRecordsAreSigned(t *testing.T) {
	st := storagetest.NewMemory()
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	good := catalog.Drill{Process: "finance", DrillID: "00000000000000a1", BackupID: "b", Start: at, End: at.Add(time.Minute), Passed: true}
	if err := catalog.PutDrill(ctx, st, good, fakeSigner{}); err != nil {
		t.Fatal(err)
	}
	planted := good
	planted.DrillID, planted.Start, planted.End = "00000000000000b2", at.Add(time.Hour), at.Add(time.Hour+time.Second)
	if err := catalog.PutDrill(ctx, st, planted, nil); err != nil {
		t.Fatal(err)
	}
	st.Put(ctx, "drills/finance/20261127T120000.000Z-00000000000000c3.json", strings.NewReader("{not json"))
	drills, skipped, err := catalog.ListDrills(ctx, st, "finance", time.Time{}, time.Time{}, fakeVerifier{})
	if err != nil || len(drills) != 1 || drills[0].DrillID != good.DrillID || len(skipped) != 2 {
		t.Fatalf("with allowed signers: %+v, skipped %v, %v", drills, skipped, err)
	}
	drills, skipped, err = catalog.ListDrills(ctx, st, "finance", time.Time{}, time.Time{}, nil)
	if err != nil || len(drills) != 2 || len(skipped) != 1 {
		t.Fatalf("without: %+v, skipped %v, %v", drills, skipped, err)
	}
	gate := catalog.Gate{GateID: "00000000000000d4", Time: at, Release: "r1", Passed: true,
		RestorePoints: map[string]catalog.RestorePoint{"pos": {Name: "drctl-before-r1-00000000", LSN: "0/3000028", Timeline: 1}}}
	if err := catalog.PutGate(ctx, st, gate, fakeSigner{}); err != nil {
		t.Fatal(err)
	}
	forged := catalog.Gate{GateID: "00000000000000e5", Time: at.Add(time.Minute), Release: "r1", Passed: true, BackupIDs: map[string]string{"finance": "evil"}}
	catalog.PutGate(ctx, st, forged, nil)
	gates, skipped, err := catalog.ListGates(ctx, st, time.Time{}, time.Time{}, fakeVerifier{})
	if err != nil || len(gates) != 1 || gates[0].RestorePoints["pos"].LSN != "0/3000028" || len(skipped) != 1 {
		t.Fatalf("gates: %+v, skipped %v, %v", gates, skipped, err)
	}
}
