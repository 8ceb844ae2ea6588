package policy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
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
	// WAL is the archive's listing, History its timelines (read only
	// with the identity; without it, recovery points are judged on the
	// base backup's own timeline).
	WAL      []wal.Entry
	History  map[uint32]wal.Switch
	recorded map[string]bool // backups with a verification record
	verified map[string]bool // by their record, read lazily
	ctx      context.Context
	st       storage.Store
	verifier catalog.Verifier
	// Skipped names the evidence records left out: unreadable, or not
	// signed by an allowed signer.
	Skipped []string
}

// ReadEvidence reads the backups, which of them verified, the archived WAL
// and (with an identity) the timeline history. With allowed signers, only
// signed manifests, WAL and records count.
func ReadEvidence(ctx context.Context, st storage.Store, v catalog.Verifier, keys *codec.Keys) (*Evidence, error) {
	all, verified, err := catalog.ListVerified(ctx, st, v)
	if err != nil {
		return nil, err
	}
	a := &wal.Archive{Store: st, Keys: keys}
	entries, err := a.List(ctx)
	if err != nil {
		return nil, err
	}
	e := &Evidence{Backups: all, WAL: entries, recorded: verified, verified: map[string]bool{}, ctx: ctx, st: st, verifier: v}
	if keys != nil && len(keys.Identities) > 0 {
		if e.History, err = a.History(ctx, entries); err != nil {
			return nil, fmt.Errorf("read timeline history: %w", err)
		}
	}
	return e, nil
}

// Drills reads a process's drill records (signed ones, with allowed
// signers), noting what was skipped.
func (e *Evidence) Drills(p Process) ([]catalog.Drill, error) {
	// Only the drills that can still matter: a year of daily drills is
	// not read every minute.
	since := time.Now().Add(-max(2*p.DrillMax, 30*24*time.Hour))
	drills, skipped, err := catalog.ListDrills(e.ctx, e.st, p.Name, since, time.Time{}, e.verifier)
	e.Skipped = append(e.Skipped, skipped...)
	return drills, err
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
		// A dump counts once verified; a base backup unless its last
		// verification failed.
		if ok, recorded := e.verification(m.ID); ok || p.Mode == ModePITR && !recorded {
			return m
		}
	}
	return nil
}

// backup finds a backup of the process by id.
func (e *Evidence) backup(p Process, id string) *catalog.Manifest {
	for _, m := range e.Backups {
		if m.ID == id && belongs(m, p) {
			return m
		}
	}
	return nil
}

// verification says whether a backup's last verification passed, and
// whether it has one.
func (e *Evidence) verification(id string) (ok, recorded bool) {
	if !e.recorded[id] {
		return false, false
	}
	ok, seen := e.verified[id]
	if !seen {
		v, err := catalog.LastVerification(e.ctx, e.st, id)
		ok = err == nil && v != nil && v.OK
		e.verified[id] = ok
	}
	return ok, true
}

// RecoveryPoint is the newest point a base backup restores to with the
// WAL archived now: the time the last segment before any gap was stored
// (or the unfinished segment wal-receive keeps right after it), along the
// timelines recovery follows. ok is false when the backup cannot be
// restored at all.
func (e *Evidence) RecoveryPoint(b *catalog.Manifest) (time.Time, string, bool) {
	p := b.Physical
	if p == nil {
		return time.Time{}, "not a base backup", false
	}
	start, ok := wal.ParseSegmentName(p.StartSegment, p.WALSegmentSize)
	stop, err := wal.ParseLSN(p.StopLSN)
	if !ok || err != nil {
		return time.Time{}, "its WAL positions are unreadable", false
	}
	chain := wal.Chain(e.WAL, e.History, start, stop, p.WALSegmentSize)
	if !chain.Restorable {
		return time.Time{}, fmt.Sprintf("WAL it needs is missing (%s)", strings.Join(chain.Missing[:min(3, len(chain.Missing))], ", ")), false
	}
	stored := map[string]time.Time{}
	partial := map[string]time.Time{}
	for _, w := range e.WAL {
		if w.Partial {
			partial[w.Name] = w.ModTime
		} else if t, seen := stored[w.Name]; !seen || w.ModTime.After(t) {
			stored[w.Name] = w.ModTime
		}
	}
	// The last segment reached before the first gap.
	last := chain.LastSegment
	if len(chain.Missing) > 0 {
		if m, ok := wal.ParseSegmentName(chain.Missing[0], p.WALSegmentSize); ok && m.No > 0 {
			last = wal.Segment{Timeline: m.Timeline, No: m.No - 1}.Name(p.WALSegmentSize)
		}
	}
	point, ok := stored[last]
	if !ok {
		return b.EndTime, "", true
	}
	if s, ok := wal.ParseSegmentName(last, p.WALSegmentSize); ok {
		if t, ok := partial[s.Next().Name(p.WALSegmentSize)]; ok && t.After(point) {
			point = t
		}
	}
	return point, "", true
}

// maxSkew is how far in the future a record's time may be before it is
// taken for a wrong clock or a forgery.
const maxSkew = 10 * time.Minute

// Evaluate judges a process's objectives at now, from the evidence and
// its drill records (oldest first). A drill counts only when its backup
// is still one of the process's backups, and its times are not in the
// future.
func Evaluate(p Process, e *Evidence, drills []catalog.Drill, now time.Time) []Result {
	var usable []catalog.Drill
	for _, d := range drills {
		if d.End.After(now.Add(maxSkew)) || d.End.Before(d.Start) {
			e.Skipped = append(e.Skipped, fmt.Sprintf("drill %s of %s: its times are impossible", d.DrillID, p.Name))
			continue
		}
		if e.backup(p, d.BackupID) == nil {
			continue // its backup is gone (pruned), or was never the process's
		}
		usable = append(usable, d)
	}
	return []Result{rpo(p, e, now), drillResult(p, usable, now), rto(p, e, usable)}
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
		point, why, ok := e.RecoveryPoint(b)
		if !ok {
			r.Reason = fmt.Sprintf("base backup %s cannot be restored: %s", b.ID, why)
			return r
		}
		r.RecoveryPoint = point
	}
	if r.RecoveryPoint.After(now.Add(maxSkew)) {
		r.Reason = fmt.Sprintf("the newest recovery point is in the future (%s): a clock is wrong, or the record is forged", r.RecoveryPoint.UTC().Format(time.RFC3339))
		return r
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
	if n := len(drills); n > 0 && strings.Contains(drills[n-1].Error, ErrTimeout) {
		// The newest drill did not finish: the restore takes longer
		// than its timeout, whatever older drills measured.
		d := drills[n-1]
		r.Achieved, r.DrillID = d.Seconds, d.DrillID
		r.Reason = fmt.Sprintf("the newest drill was stopped by its timeout after %s: a restore takes longer", round(time.Duration(d.Seconds*float64(time.Second))))
		return r
	}
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
	// Sizes from the manifests, not from the drill's record.
	if b, drilled := e.NewestBackup(p), e.backup(p, d.BackupID); b != nil && drilled != nil && drilled.RawSize() > 0 && b.RawSize() > 0 {
		r.Projected = d.Seconds * float64(b.RawSize()) / float64(drilled.RawSize())
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

// ErrTimeout is in a drill's error when its timeout stopped it.
const ErrTimeout = "stopped by the drill timeout"

func round(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
