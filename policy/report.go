package policy

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/storage"
)

// Report is the recovery objectives over a period, per process: what a
// manager reads, and the same for machines (--json).
type Report struct {
	Generated  time.Time       `json:"generated"`
	Since      time.Time       `json:"since"`
	Repository string          `json:"repository"`
	Processes  []ProcessReport `json:"processes"`
	Gates      []catalog.Gate  `json:"gates"`
}

// ProcessReport is one process over the period.
type ProcessReport struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Mode        string   `json:"mode"`
	Database    string   `json:"database"`
	RPOTarget   float64  `json:"rpo_target_seconds"`
	RTOTarget   float64  `json:"rto_target_seconds"`
	Now         []Result `json:"objectives"`
	// RPO is the data that could have been lost over time: at each point,
	// how old the newest recovery point was just before the next one came
	// (the worst of each interval), and now.
	RPO []Point `json:"rpo"`
	// RTO is each drill's measured restore time.
	RTO    []Point         `json:"rto"`
	Drills []catalog.Drill `json:"drills"`
}

// Point is one value at one time.
type Point struct {
	Time    time.Time `json:"time"`
	Seconds float64   `json:"seconds"`
	OK      bool      `json:"ok"`
}

// BuildReport reads the repository's records since then.
func BuildReport(ctx context.Context, st storage.Store, procs []Process, since, now time.Time, v catalog.Verifier, keys *codec.Keys) (*Report, error) {
	ev, err := ReadEvidence(ctx, st, v, keys)
	if err != nil {
		return nil, err
	}
	gates, _, err := catalog.ListGates(ctx, st, since, time.Time{}, v)
	if err != nil {
		return nil, err
	}
	r := &Report{Generated: now.UTC(), Since: since.UTC(), Repository: st.String(), Gates: gates}
	var walTimes []time.Time
	for _, p := range procs {
		if p.Mode == ModePITR && walTimes == nil {
			for _, e := range ev.WAL {
				walTimes = append(walTimes, e.ModTime)
			}
			sort.Slice(walTimes, func(i, j int) bool { return walTimes[i].Before(walTimes[j]) })
		}
		drills, err := ev.Drills(p)
		if err != nil {
			return nil, err
		}
		pr := ProcessReport{Name: p.Name, Description: p.Description, Mode: p.Mode, Database: p.Database,
			RPOTarget: p.RPO.Seconds(), RTOTarget: p.RTO.Seconds(), Now: Evaluate(p, ev, drills, now)}
		var points []time.Time
		if p.Mode == ModeLogical {
			for _, m := range ev.Backups {
				if belongs(m, p) {
					points = append(points, m.StartTime)
				}
			}
			sort.Slice(points, func(i, j int) bool { return points[i].Before(points[j]) })
		} else {
			points = walTimes
		}
		pr.RPO = lagSeries(points, since, now, p.RPO)
		for _, d := range drills {
			if d.Start.Before(since) {
				continue
			}
			pr.Drills = append(pr.Drills, d)
			if d.Seconds > 0 {
				pr.RTO = append(pr.RTO, Point{Time: d.End, Seconds: d.Seconds, OK: d.Passed && d.Seconds <= p.RTO.Seconds()})
			}
		}
		r.Processes = append(r.Processes, pr)
	}
	return r, nil
}

// maxPoints bounds a series (a year of WAL is hundreds of thousands of
// files): the worst lag of each of this many slices of the period.
const maxPoints = 400

// lagSeries is, over [since, now], how old the newest recovery point was
// just before each new one (the worst of that interval), and now —
// reduced to the worst of each of maxPoints slices.
func lagSeries(points []time.Time, since, now time.Time, target time.Duration) []Point {
	var raw []Point
	var prev time.Time
	for _, t := range points {
		if !prev.IsZero() && t.After(since) && !t.After(now) {
			lag := t.Sub(prev)
			raw = append(raw, Point{Time: t, Seconds: lag.Seconds(), OK: lag <= target})
		}
		if !t.After(now) {
			prev = t
		}
	}
	if !prev.IsZero() {
		lag := now.Sub(prev)
		raw = append(raw, Point{Time: now, Seconds: lag.Seconds(), OK: lag <= target})
	}
	if len(raw) <= maxPoints {
		return raw
	}
	slice := now.Sub(since) / maxPoints
	var out []Point
	for _, p := range raw {
		if n := len(out); n > 0 && p.Time.Sub(since)/slice == out[n-1].Time.Sub(since)/slice {
			if p.Seconds > out[n-1].Seconds {
				out[n-1] = p
			}
			continue
		}
		out = append(out, p)
	}
	return out
}

// humanSeconds says a duration in seconds the short way.
func humanSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case s < 0:
		return "–"
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", s)
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%.1fd", d.Hours()/24)
}
