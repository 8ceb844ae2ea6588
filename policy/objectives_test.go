package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func manifest(id, kind, db, process string, start time.Time, raw int64) *catalog.Manifest {
	return &catalog.Manifest{ID: id, Kind: kind, Database: db, StartTime: start, EndTime: start.Add(time.Minute),
		Labels: map[string]string{"process": process}, Objects: []catalog.Object{{RawSize: raw, Size: raw / 10}}}
}

func TestEvaluate(t *testing.T) {
	finance := Process{Name: "finance", Database: "erp", Mode: ModeLogical, RPO: time.Hour, RTO: 30 * time.Minute, DrillMax: 7 * 24 * time.Hour}
	pos := Process{Name: "pos-sync", Database: "pos", Mode: ModePITR, RPO: time.Minute, RTO: 10 * time.Minute, DrillMax: 7 * 24 * time.Hour}
	base := manifest("e", catalog.KindPhysical, "", "pos-sync", now.Add(-2*time.Hour), 8000)
	base.Physical = &catalog.Physical{StartSegment: "000000010000000000000002", StopLSN: "0/2000100", WALSegmentSize: 16 << 20}
	segment := func(name string, ago time.Duration, partial bool) wal.Entry {
		return wal.Entry{Name: name, Hash: "00", Partial: partial, ModTime: now.Add(-ago)}
	}
	ev := &Evidence{
		Backups: []*catalog.Manifest{
			manifest("a", catalog.KindLogical, "erp", "finance", now.Add(-3*time.Hour), 1000),
			manifest("b", catalog.KindLogical, "erp", "finance", now.Add(-30*time.Minute), 4000), // verified
			manifest("c", catalog.KindLogical, "erp", "finance", now.Add(-5*time.Minute), 4000),  // not verified
			manifest("d", catalog.KindLogical, "erp", "", now.Add(-time.Minute), 4000),           // not the process's
			base,
		},
		WAL: []wal.Entry{segment("000000010000000000000002", 2*time.Hour, false), segment("000000010000000000000003", time.Hour, false),
			segment("000000010000000000000004", 90*time.Second, false)},
		recorded: map[string]bool{"a": true, "b": true},
		verified: map[string]bool{"a": true, "b": true},
	}
	drills := []catalog.Drill{{DrillID: "d1", BackupID: "a", Passed: true, Seconds: 60, RawBytes: 1000, Start: now.Add(-25 * time.Hour), End: now.Add(-24 * time.Hour)}}
	byObjective := func(rs []Result) map[string]Result {
		m := map[string]Result{}
		for _, r := range rs {
			m[r.Objective] = r
		}
		return m
	}
	f := byObjective(Evaluate(finance, ev, drills, now))
	if r := f[ObjectiveRPO]; !r.Met || r.BackupID != "b" || r.Achieved != 1800 {
		t.Fatalf("finance rpo: %+v (want the newest verified dump, b, 30 minutes old)", r)
	}
	if r := f[ObjectiveDrill]; !r.Met || r.DrillID != "d1" {
		t.Fatalf("finance drill: %+v", r)
	}
	// The drill restored a (1000 bytes) in 60 s; today's dump has 4000: 240 s.
	if r := f[ObjectiveRTO]; !r.Met || r.Achieved != 60 || r.Projected != 240 {
		t.Fatalf("finance rto: %+v", r)
	}
	p := byObjective(Evaluate(pos, ev, nil, now))
	if r := p[ObjectiveRPO]; r.Met || r.Achieved != 90 || !strings.Contains(r.Reason, "archived 1m30s ago: over the RPO of 1m0s") {
		t.Fatalf("pos rpo: %+v", r)
	}
	if r := p[ObjectiveDrill]; r.Met || r.Reason != "no drill has been run" {
		t.Fatalf("pos drill: %+v", r)
	}
	if r := p[ObjectiveRTO]; r.Met || r.Achieved != -1 {
		t.Fatalf("pos rto: %+v", r)
	}
	// A stale drill, a failed one, one that was too slow, a projection
	// over the RTO.
	stale := []catalog.Drill{{DrillID: "d2", BackupID: "a", Passed: true, Seconds: 60, End: now.Add(-8 * 24 * time.Hour)}}
	if r := byObjective(Evaluate(finance, ev, stale, now))[ObjectiveDrill]; r.Met || !strings.Contains(r.Reason, "longer than the 168h0m0s allowed") {
		t.Fatalf("stale drill: %+v", r)
	}
	failed := append(drills, catalog.Drill{DrillID: "d3", BackupID: "b", Passed: false, Error: "checks failed: x", Seconds: 50, End: now.Add(-time.Hour)})
	fr := byObjective(Evaluate(finance, ev, failed, now))
	if r := fr[ObjectiveDrill]; r.Met || !strings.Contains(r.Reason, "failed: checks failed: x") {
		t.Fatalf("failed drill: %+v", r)
	}
	if r := fr[ObjectiveRTO]; r.DrillID != "d1" {
		t.Fatalf("rto judged on a drill whose checks failed: %+v", r)
	}
	slow := []catalog.Drill{{DrillID: "d4", BackupID: "b", Passed: false, Error: ErrRTOOnly, Seconds: 2400, End: now.Add(-time.Hour)}}
	if r := byObjective(Evaluate(finance, ev, slow, now))[ObjectiveRTO]; r.Met || !strings.Contains(r.Reason, "took 40m0s, over the RTO of 30m0s") {
		t.Fatalf("slow drill: %+v", r)
	}
	grown := []catalog.Drill{{DrillID: "d5", BackupID: "a", Passed: true, Seconds: 600, RawBytes: 4000, End: now.Add(-time.Hour)}} // the record's size is not trusted
	if r := byObjective(Evaluate(finance, ev, grown, now))[ObjectiveRTO]; r.Met || r.Projected != 2400 || !strings.Contains(r.Reason, "would take 40m0s") {
		t.Fatalf("projection: %+v", r)
	}
	// wal-receive's unfinished segment after the last one: the newest point.
	ev.WAL = append(ev.WAL, segment("000000010000000000000005", 20*time.Second, true))
	if r := byObjective(Evaluate(pos, ev, nil, now))[ObjectiveRPO]; !r.Met || r.Achieved != 20 {
		t.Fatalf("pos with a partial segment: %+v", r)
	}
	// A gap: the recovery point stops before it, whatever is archived after.
	ev.WAL = []wal.Entry{segment("000000010000000000000002", 2*time.Hour, false), segment("000000010000000000000003", time.Hour, false),
		segment("000000010000000000000005", 10*time.Second, false)}
	if r := byObjective(Evaluate(pos, ev, nil, now))[ObjectiveRPO]; r.Met || r.Achieved != 3600 {
		t.Fatalf("pos with a gap: %+v", r)
	}
	// The WAL the base backup itself needs is missing: not restorable.
	ev.WAL = nil
	if r := byObjective(Evaluate(pos, ev, nil, now))[ObjectiveRPO]; r.Met || !strings.Contains(r.Reason, "cannot be restored: WAL it needs is missing") {
		t.Fatalf("pos without WAL: %+v", r)
	}
	// Forged or broken records: a drill of a backup that is not the
	// process's, one from the future, a newest drill stopped by its timeout.
	forged := []catalog.Drill{{DrillID: "f1", BackupID: "zzz", Passed: true, Seconds: 1, Start: now.Add(-time.Hour), End: now.Add(-time.Hour)},
		{DrillID: "f2", BackupID: "a", Passed: true, Seconds: 1, Start: now.Add(time.Hour), End: now.Add(2 * time.Hour)}}
	if r := byObjective(Evaluate(finance, ev, forged, now))[ObjectiveDrill]; r.Met {
		t.Fatalf("forged drills counted: %+v", r)
	}
	timedOut := append(drills, catalog.Drill{DrillID: "t1", BackupID: "b", Seconds: 1800, Error: "restore: " + ErrTimeout + " of 30m0s", Start: now.Add(-time.Hour), End: now.Add(-time.Hour)})
	if r := byObjective(Evaluate(finance, ev, timedOut, now))[ObjectiveRTO]; r.Met || !strings.Contains(r.Reason, "stopped by its timeout") {
		t.Fatalf("timed-out drill: %+v", r)
	}
}

func TestParseProcesses(t *testing.T) {
	good := `repo: x
processes:
  - name: pos-sync
    database: pos
    mode: pitr
    rpo: 1m
    rto: 10m
    drill: {max_age: 7d, timeout: 30m}
    checks:
      - {name: orders present, sql: "SELECT count(*) FROM pos_order", expect: ">= 1000"}
      - {name: none negative, sql: "SELECT 1", expect: none}
      - {name: fresh, sql: "SELECT now()", expect: within_rpo}
`
	procs, problems := ParseProcesses([]byte(good))
	if len(problems) != 0 || len(procs) != 1 || procs[0].RPO != time.Minute || procs[0].DrillMax != 7*24*time.Hour || len(procs[0].Checks) != 3 {
		t.Fatalf("%+v %v", procs, problems)
	}
	if e := procs[0].Checks[0].Expect; e.Kind != "compare" || e.Op != ">=" || e.N != 1000 || !e.Holds(1000) || e.Holds(999) {
		t.Fatalf("expect %+v", e)
	}
	bad := `processes:
  - name: Bad
    mode: backup
    rpo: soon
    drill: {max_age: 7d, timeout: 1m, every: 1d}
    checks:
      - {name: a, sql: "SELECT 1", expect: "about 3"}
      - {name: b}
  - name: ok
    database: d
    mode: logical
    rpo: 1h
    rto: 2h
  - name: ok
    database: d
    mode: logical
    rpo: 1h
    rto: 30m
`
	_, problems = ParseProcesses([]byte(bad))
	joined := strings.Join(problems, "\n")
	for _, want := range []string{
		`line 2: process "Bad": a name is lowercase`,
		`line 3: mode "backup"`,
		`line 4: rpo: duration "soon"`,
		`line 5: drill: unknown key "every"`,
		`line 7: check "a": expect "about 3"`,
		`line 8: check: name, sql and expect are required`,
		`line 2: process "Bad": a database is required`,
		`line 2: process "Bad": rto (how long a restore may take, e.g. 10m) is required`,
		`line 9: process "ok": drill timeout 1h0m0s is shorter than the RTO 2h0m0s`,
		`line 14: process "ok": the name is already used by the process at line 9`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("no problem %q in:\n%s", want, joined)
		}
	}
}
