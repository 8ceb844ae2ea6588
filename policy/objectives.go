package policy

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage"
)

// Objectives.
const (
	ObjectiveRPO   = "rpo"
	ObjectiveDrill = "drill"
	ObjectiveRTO   = "rto"
)

// Result is one objective of one process, judged from the repository's
// records alone.
type Result struct {
	Process   string  `json:"process"`
	Objective string  `json:"objective"`
	Target    float64 `json:"target_seconds"`
	// Achieved is the measured value (seconds; for drill, the newest
	// drill's age); -1 when there is nothing to measure.
	Achieved float64 `json:"achieved_seconds"`
	// Projected (rto only) is the newest drill's time scaled to today's
	// backup size.
	Projected float64 `json:"projected_seconds,omitempty"`
	Met       bool    `json:"met"`
	Reason    string  `json:"reason"`
	// What the judgement rests on.
	BackupID      string    `json:"backup_id,omitempty"`
	DrillID       string    `json:"drill_id,omitempty"`
	RecoveryPoint time.Time `json:"recovery_point,omitzero"`
}

// Evidence is what the repository holds, read once for every process.
type Evidence struct {
	Backups []*catalog.Manifest
	// NewestWAL is when the newest WAL file was stored (zero: none).
	NewestWAL time.Time
	recorded  map[string]bool // backups with a verification record
	ok        map[string]bool // verified, by their record (read lazily)
	ctx       context.Context
	st        storage.Store
}

// ReadEvidence reads the backups, which of them verified, and the newest
// archived WAL.
func ReadEvidence(ctx context.Context, st storage.Store, v catalog.Verifier) (*Evidence, error) {
	all, verified, err := catalog.ListVerified(ctx, st, v)
	if err != nil {
		return nil, err
	}
	a := &wal.Archive{Store: st}
	entries, err := a.List(ctx)
	if err != nil {
		return nil, err
	}
	e := &Evidence{Backups: all, recorded: verified, ok: map[string]bool{}, ctx: ctx, st: st}
	for _, w := range entries {
		if w.ModTime.After(e.NewestWAL) {
			e.NewestWAL = w.ModTime
		}
	}
	return e, nil
}

// belongs reports whether a backup is the process's: labelled
// process=<name>, of the process's kind (and database, for dumps).
func belongs(m *catalog.Manifest, p Process) bool {
	if m.Labels["process"] != p.Name {
		return false
	}
	if p.Mode == ModeLogical {
		return m.Kind == catalog.KindLogical && m.Database == p.Database
	}
	return m.Kind == catalog.KindPhysical
}

// NewestBackup is the process's newest backup (for logical: the newest
// whose last verification passed).
func (e *Evidence) NewestBackup(p Process) *catalog.Manifest {
	var mine []*catalog.Manifest
	for _, m := range e.Backups {
		if belongs(m, p) {
			mine = append(mine, m)
		}
	}
	sort.SliceStable(mine, func(i, j int) bool { return mine[i].StartTime.After(mine[j].StartTime) })
	for _, m := range mine {
		if p.Mode == ModePITR || e.verifiedOK(m.ID) {
			return m
		}
	}
	return nil
}

func (e *Evidence) verifiedOK(id string) bool {
	if !e.recorded[id] {
		return false
	}
	ok, seen := e.ok[id]
	if !seen {
		v, err := catalog.LastVerification(e.ctx, e.st, id)
		ok = err == nil && v != nil && v.OK
		e.ok[id] = ok
	}
	return ok
}

// Evaluate judges a process's objectives at now, from the evidence and
// its drill records (oldest first).
func Evaluate(p Process, e *Evidence, drills []catalog.Drill, now time.Time) []Result {
	return []Result{rpo(p, e, now), drillResult(p, drills, now), rto(p, e, drills)}
}

func rpo(p Process, e *Evidence, now time.Time) Result {
	r := Result{Process: p.Name, Objective: ObjectiveRPO, Target: p.RPO.Seconds(), Achieved: -1}
	b := e.NewestBackup(p)
	switch {
	case b == nil && p.Mode == ModeLogical:
		r.Reason = fmt.Sprintf("no verified dump of %s labelled process=%s", p.Database, p.Name)
		return r
	case b == nil:
		r.Reason = fmt.Sprintf("no base backup labelled process=%s: the archived WAL has nothing to start from", p.Name)
		return r
	}
	r.BackupID = b.ID
	if p.Mode == ModeLogical {
		r.RecoveryPoint = b.StartTime
	} else {
		if e.NewestWAL.IsZero() || e.NewestWAL.Before(b.EndTime) {
			r.Reason = fmt.Sprintf("no WAL archived since base backup %s ended", b.ID)
			return r
		}
		r.RecoveryPoint = e.NewestWAL
	}
	lag := now.Sub(r.RecoveryPoint)
	r.Achieved = max(0, lag.Seconds())
	r.Met = lag <= p.RPO
	what := "the newest verified dump was taken"
	if p.Mode == ModePITR {
		what = "the newest WAL was archived"
	}
	verdict := "within"
	if !r.Met {
		verdict = "over"
	}
	r.Reason = fmt.Sprintf("%s %s ago: %s the RPO of %s", what, round(lag), verdict, p.RPO)
	return r
}

func drillResult(p Process, drills []catalog.Drill, now time.Time) Result {
	r := Result{Process: p.Name, Objective: ObjectiveDrill, Target: p.DrillMax.Seconds(), Achieved: -1}
	if len(drills) == 0 {
		r.Reason = "no drill has been run"
		return r
	}
	d := drills[len(drills)-1]
	age := now.Sub(d.End)
	r.Achieved, r.DrillID, r.BackupID = max(0, age.Seconds()), d.DrillID, d.BackupID
	switch {
	case !d.Passed:
		r.Reason = fmt.Sprintf("the newest drill (%s ago) failed: %s", round(age), d.Error)
	case age > p.DrillMax:
		r.Reason = fmt.Sprintf("the newest drill passed %s ago, longer than the %s allowed", round(age), p.DrillMax)
	default:
		r.Met = true
		r.Reason = fmt.Sprintf("the newest drill passed %s ago", round(age))
	}
	return r
}

func rto(p Process, e *Evidence, drills []catalog.Drill) Result {
	r := Result{Process: p.Name, Objective: ObjectiveRTO, Target: p.RTO.Seconds(), Achieved: -1}
	var d *catalog.Drill
	for i := len(drills) - 1; i >= 0; i-- {
		if drills[i].Seconds > 0 && (drills[i].Passed || drills[i].Error == ErrRTOOnly) {
			d = &drills[i]
			break
		}
	}
	if d == nil {
		r.Reason = "no drill has measured a restore"
		return r
	}
	r.Achieved, r.DrillID = d.Seconds, d.DrillID
	measured := time.Duration(d.Seconds * float64(time.Second))
	r.Projected = d.Seconds
	if b := e.NewestBackup(p); b != nil && d.RawBytes > 0 && b.RawSize() > 0 {
		r.Projected = d.Seconds * float64(b.RawSize()) / float64(d.RawBytes)
	}
	projected := time.Duration(r.Projected * float64(time.Second))
	r.Met = measured <= p.RTO && projected <= p.RTO
	switch {
	case measured > p.RTO:
		r.Reason = fmt.Sprintf("the newest drill took %s, over the RTO of %s", round(measured), p.RTO)
	case projected > p.RTO:
		r.Reason = fmt.Sprintf("the newest drill took %s; today's backup is bigger, and at that rate would take %s, over the RTO of %s", round(measured), round(projected), p.RTO)
	default:
		r.Reason = fmt.Sprintf("the newest drill took %s (today's backup: %s at that rate), within the RTO of %s", round(measured), round(projected), p.RTO)
	}
	return r
}

// ErrRTOOnly is a drill's error when only its time was over: it measured
// a restore, so the RTO objective judges it.
const ErrRTOOnly = "the restore took longer than the RTO"

func round(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
