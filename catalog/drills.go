package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	// per pitr process (its name, and where it is: LSN and timeline).
	BackupIDs     map[string]string       `json:"backup_ids,omitempty"`
	RestorePoints map[string]RestorePoint `json:"restore_points,omitempty"`
	Host          string                  `json:"host"`
}

// Evidence records (drills, gates) are signed like manifests when a
// signing key is configured: <record>.json.sig over the record's bytes.
// With allowed signers, readers skip a record without a good signature: a
// planted "passed" drill must not open a gate.

// putSigned stores v as JSON at key, and its signature first.
func putSigned(ctx context.Context, st storage.Store, key string, v any, signer Signer) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if signer != nil {
		sig, err := signer.Sign(body)
		if err != nil {
			return err
		}
		if err := st.Put(ctx, key+".sig", bytes.NewReader(sig)); err != nil {
			return fmt.Errorf("signature of %s: %w", key, err)
		}
	}
	return st.Put(ctx, key, bytes.NewReader(body))
}

// RestorePoint is a named point in a cluster's WAL.
type RestorePoint struct {
	Name     string `json:"name"`
	LSN      string `json:"lsn"`
	Timeline uint32 `json:"timeline"`
}

// PutDrill stores a drill's record (signed when signer is set).
func PutDrill(ctx context.Context, st storage.Store, d Drill, signer Signer) error {
	if !ValidJobName(d.Process) || !validRunID(d.DrillID) {
		return fmt.Errorf("invalid drill record (process %q, id %q)", d.Process, d.DrillID)
	}
	return putSigned(ctx, st, drillsPrefix+d.Process+"/"+d.Start.UTC().Format(runTimeLayout)+"-"+d.DrillID+".json", d, signer)
}

// ListDrills returns a process's drills that started in [from, to) (zero
// bounds are open), oldest first. Records that are unreadable, name
// another process or (with v) lack a good signature are left out and
// reported in skipped.
func ListDrills(ctx context.Context, st storage.Store, process string, from, to time.Time, v Verifier) (drills []Drill, skipped []string, err error) {
	if !ValidJobName(process) {
		return nil, nil, fmt.Errorf("invalid process name %q", process)
	}
	recs, skipped, err := readRecords[Drill](ctx, st, drillsPrefix+process+"/", from, to, v)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range recs {
		if r.v.Process != process {
			skipped = append(skipped, r.key+": names process "+r.v.Process)
			continue
		}
		drills = append(drills, r.v)
	}
	sort.SliceStable(drills, func(i, j int) bool { return drills[i].Start.Before(drills[j].Start) })
	return drills, skipped, nil
}

// PutGate stores a gate decision (signed when signer is set).
func PutGate(ctx context.Context, st storage.Store, g Gate, signer Signer) error {
	if !validRunID(g.GateID) {
		return fmt.Errorf("invalid gate id %q", g.GateID)
	}
	return putSigned(ctx, st, gatesPrefix+g.Time.UTC().Format(runTimeLayout)+"-"+g.GateID+".json", g, signer)
}

// ListGates returns the gate decisions made in [from, to), oldest first,
// as ListDrills does.
func ListGates(ctx context.Context, st storage.Store, from, to time.Time, v Verifier) ([]Gate, []string, error) {
	recs, skipped, err := readRecords[Gate](ctx, st, gatesPrefix, from, to, v)
	if err != nil {
		return nil, nil, err
	}
	out := make([]Gate, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.v)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, skipped, nil
}

type record[T any] struct {
	key string
	v   T
}

// readRecords reads signed evidence records: like readTimed, but a record
// that cannot be understood, or (with v) has no good signature, is skipped
// and named rather than failing every reader.
func readRecords[T any](ctx context.Context, st storage.Store, prefix string, from, to time.Time, v Verifier) ([]record[T], []string, error) {
	keys, err := timedKeys(ctx, st, prefix, from, to)
	if err != nil {
		return nil, nil, err
	}
	out := make([]record[T], len(keys))
	bad := make([]string, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, k := range keys {
		g.Go(func() error {
			out[i].key = k
			rc, err := st.Get(gctx, k)
			if errors.Is(err, storage.ErrNotExist) {
				bad[i] = k + ": gone"
				return nil
			}
			if err != nil {
				return err
			}
			body, err := io.ReadAll(io.LimitReader(rc, maxRecord+1))
			rc.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", k, err)
			}
			if len(body) > maxRecord || json.Unmarshal(body, &out[i].v) != nil {
				bad[i] = k + ": unreadable"
				return nil
			}
			if v != nil {
				if _, err := VerifySignature(gctx, st, k+".sig", body, v); err != nil {
					bad[i] = k + ": " + err.Error()
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	var kept []record[T]
	var skipped []string
	for i := range out {
		if bad[i] != "" {
			skipped = append(skipped, bad[i])
			continue
		}
		kept = append(kept, out[i])
	}
	return kept, skipped, nil
}

// readTimed reads the records under prefix whose keys (<time>-<id>.json,
// <time> as runTimeLayout) fall in [from, to) (zero bounds are open),
// listing only below the range's common key prefix, eight reads at a time.
func readTimed[T any](ctx context.Context, st storage.Store, prefix string, from, to time.Time) ([]T, error) {
	keys, err := timedKeys(ctx, st, prefix, from, to)
	if err != nil {
		return nil, err
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

// timedKeys lists the keys under prefix named <time>-<id>.json whose time
// is in [from, to), listing only below the range's common key prefix.
func timedKeys(ctx context.Context, st storage.Store, prefix string, from, to time.Time) ([]string, error) {
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
	return keys, nil
}

// LastDrills returns, per backup id, the newest drill of it that started
// since then (every process's).
func LastDrills(ctx context.Context, st storage.Store, since time.Time, v Verifier) (map[string]Drill, error) {
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
		drills, _, err := ListDrills(ctx, st, p, since, time.Time{}, v)
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
