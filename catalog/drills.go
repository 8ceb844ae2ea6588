package catalog

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/drctl/drctl/storage"
)

// Restore drills and release gate decisions (FORMAT.md, "Drills and
// gates"):
//
//	drills/<process>/<start>-<drill id>.json   one record per drill
//	gates/<start>-<gate id>.json               one record per gate decision
const (
	drillsPrefix = "drills/"
	gatesPrefix  = "gates/"
)

// Drill is the record of one restore drill.
type Drill struct {
	Process  string `json:"process"`
	DrillID  string `json:"drill_id"`
	Mode     string `json:"mode"`
	BackupID string `json:"backup_id"`
	// RecoveryPoint is the newest point the restored data holds: a dump's
	// snapshot (its start), or the last commit replayed.
	RecoveryPoint time.Time `json:"recovery_point,omitzero"`
	Start         time.Time `json:"start"`
	End           time.Time `json:"end"`
	// Seconds is the measured restore time: from the start to the checks
	// passed (or to the failure).
	Seconds float64      `json:"seconds"`
	Phases  []DrillPhase `json:"phases"`
	Checks  []DrillCheck `json:"checks"`
	Passed  bool         `json:"passed"`
	Error   string       `json:"error,omitempty"`
	Sandbox string       `json:"sandbox"`
	// RawBytes is the size of the backup restored, for projecting the
	// restore time of a bigger one.
	RawBytes int64  `json:"raw_bytes"`
	Host     string `json:"host"`
}

// DrillPhase is one timed part of a drill.
type DrillPhase struct {
	Name    string  `json:"name"` // restore, replay, checks
	Seconds float64 `json:"seconds"`
}

// DrillCheck is one data check's outcome.
type DrillCheck struct {
	Name   string `json:"name"`
	Expect string `json:"expect"`
	Passed bool   `json:"passed"`
	Saw    string `json:"saw"`
}

// Gate is the record of one release gate decision.
type Gate struct {
	GateID    string    `json:"gate_id"`
	Time      time.Time `json:"time"`
	Release   string    `json:"release,omitempty"`
	Processes []string  `json:"processes"`
	Passed    bool      `json:"passed"`
	Reasons   []string  `json:"reasons"`
	// What --backup-now made: a dump per logical process, a restore point
	// per pitr process.
	BackupIDs     map[string]string `json:"backup_ids,omitempty"`
	RestorePoints map[string]string `json:"restore_points,omitempty"`
	Host          string            `json:"host"`
}

// PutDrill stores a drill's record.
func PutDrill(ctx context.Context, st storage.Store, d Drill) error {
	if !ValidJobName(d.Process) || !validRunID(d.DrillID) {
		return fmt.Errorf("invalid drill record (process %q, id %q)", d.Process, d.DrillID)
	}
	return putJSON(ctx, st, drillsPrefix+d.Process+"/"+d.Start.UTC().Format(runTimeLayout)+"-"+d.DrillID+".json", d)
}

// ListDrills returns a process's drills that started in [from, to) (zero
// bounds are open), oldest first.
func ListDrills(ctx context.Context, st storage.Store, process string, from, to time.Time) ([]Drill, error) {
	if !ValidJobName(process) {
		return nil, fmt.Errorf("invalid process name %q", process)
	}
	out, err := readTimed[Drill](ctx, st, drillsPrefix+process+"/", from, to)
	if err != nil {
		return nil, err
	}
	for _, d := range out {
		if d.Process != process {
			return nil, fmt.Errorf("a drill record under %s names process %q: %w", process, d.Process, ErrCorruptRecord)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out, nil
}

// PutGate stores a gate decision.
func PutGate(ctx context.Context, st storage.Store, g Gate) error {
	if !validRunID(g.GateID) {
		return fmt.Errorf("invalid gate id %q", g.GateID)
	}
	return putJSON(ctx, st, gatesPrefix+g.Time.UTC().Format(runTimeLayout)+"-"+g.GateID+".json", g)
}

// ListGates returns the gate decisions made in [from, to), oldest first.
func ListGates(ctx context.Context, st storage.Store, from, to time.Time) ([]Gate, error) {
	out, err := readTimed[Gate](ctx, st, gatesPrefix, from, to)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// readTimed reads the records under prefix whose keys (<time>-<id>.json,
// <time> as runTimeLayout) fall in [from, to) (zero bounds are open),
// listing only below the range's common key prefix, eight reads at a time.
func readTimed[T any](ctx context.Context, st storage.Store, prefix string, from, to time.Time) ([]T, error) {
	narrow := prefix
	if !from.IsZero() && !to.IsZero() {
		a, b := from.UTC().Format(runTimeLayout), to.UTC().Format(runTimeLayout)
		n := 0
		for n < len(a) && n < len(b) && a[n] == b[n] {
			n++
		}
		narrow += a[:n]
	}
	objs, err := st.List(ctx, narrow)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, o := range objs {
		name := strings.TrimSuffix(strings.TrimPrefix(o.Key, prefix), ".json")
		stamp, id, ok := strings.Cut(name, "-")
		if !ok || !validRunID(id) || strings.Contains(name, "/") {
			continue
		}
		at, err := time.Parse(runTimeLayout, stamp)
		if err != nil || (!from.IsZero() && at.Before(from)) || (!to.IsZero() && !at.Before(to)) {
			continue
		}
		keys = append(keys, o.Key)
	}
	out := make([]T, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, k := range keys {
		g.Go(func() error { return getJSON(gctx, st, k, &out[i]) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// LastDrills returns, per backup id, the newest drill of it that started
// since then (every process's).
func LastDrills(ctx context.Context, st storage.Store, since time.Time) (map[string]Drill, error) {
	objs, err := st.List(ctx, drillsPrefix)
	if err != nil {
		return nil, err
	}
	processes := map[string]bool{}
	for _, o := range objs {
		if p, _, ok := strings.Cut(strings.TrimPrefix(o.Key, drillsPrefix), "/"); ok && ValidJobName(p) {
			processes[p] = true
		}
	}
	out := map[string]Drill{}
	for p := range processes {
		drills, err := ListDrills(ctx, st, p, since, time.Time{})
		if err != nil {
			return nil, err
		}
		for _, d := range drills {
			if prev, ok := out[d.BackupID]; !ok || d.Start.After(prev.Start) {
				out[d.BackupID] = d
			}
		}
	}
	return out, nil
}
