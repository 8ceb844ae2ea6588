package policy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage"
)

// Retention says which backups to keep. The newest backup of each kind and
// the newest verified backup of each kind are always kept.
type Retention struct {
	// KeepLast keeps the newest N backups of each kind (logical, physical).
	KeepLast int
	// KeepWithin keeps every backup that ended less than this long ago.
	KeepWithin time.Duration
}

// Plan is what a prune deletes and keeps.
type Plan struct {
	Keep   []Decision `json:"keep"`
	Delete []Decision `json:"delete"`
	// WAL no kept base backup needs: older than the oldest kept one's start.
	WALDelete      []string `json:"-"`
	WALDeleteCount int      `json:"wal_delete_count"`
	WALDeleteBytes int64    `json:"wal_delete_bytes"`
	WALKeepFrom    string   `json:"wal_keep_from_segment,omitempty"`
	now            time.Time
	// Orphans are objects of backups that never committed (or whose delete
	// was interrupted) and whose writer is provably dead: lease expired.
	Orphans []string `json:"orphans"`
	// Unfinished are backups without a manifest whose writer may still be
	// running (live lease) or could not be checked: never deleted.
	Unfinished []string `json:"unfinished"`
	// Warnings say what could not be read; what they concern was kept.
	Warnings []string `json:"warnings,omitempty"`
}

// Decision is one backup and why it is kept or deleted.
type Decision struct {
	ID     string    `json:"id"`
	Kind   string    `json:"kind"`
	End    time.Time `json:"end_time"`
	Reason string    `json:"reason"`
}

// ErrNoRule refuses a prune without a retention rule.
var ErrNoRule = errors.New("give --keep-last N and/or --keep-within DURATION")

// PlanPrune decides what to delete. With a verifier, a manifest not signed
// by an allowed signer stops the prune: a forged "newer" backup must not
// push real ones out of the retention window.
func PlanPrune(ctx context.Context, st storage.Store, r Retention, now time.Time, v catalog.Verifier) (*Plan, error) {
	if r.KeepLast <= 0 && r.KeepWithin <= 0 {
		return nil, ErrNoRule
	}
	all, recorded, err := catalog.ListVerified(ctx, st, v)
	if err != nil {
		return nil, err
	}
	reasons := map[string]string{}
	byKind := map[string][]*catalog.Manifest{}
	for _, m := range all {
		byKind[m.Kind] = append(byKind[m.Kind], m) // oldest first
	}
	for _, list := range byKind {
		for i, m := range list {
			fromNewest := len(list) - 1 - i
			switch {
			case fromNewest == 0:
				reasons[m.ID] = "newest"
			case fromNewest < r.KeepLast:
				reasons[m.ID] = fmt.Sprintf("among the last %d", r.KeepLast)
			case r.KeepWithin > 0 && now.Sub(m.EndTime) < r.KeepWithin:
				reasons[m.ID] = "within " + r.KeepWithin.String()
			}
		}
		// The recovery window must reach back KeepWithin: the newest base
		// backup from before the window is its starting point.
		if r.KeepWithin > 0 {
			for i := len(list) - 1; i >= 0; i-- {
				if now.Sub(list[i].EndTime) >= r.KeepWithin {
					if reasons[list[i].ID] == "" && list[i].Kind == catalog.KindPhysical {
						reasons[list[i].ID] = "base of the " + r.KeepWithin.String() + " recovery window"
					}
					break
				}
			}
		}
		// The newest verified backup stays whatever the rules say.
		for i := len(list) - 1; i >= 0; i-- {
			if !recorded[list[i].ID] {
				continue // never verified: no record to read
			}
			v, err := catalog.LastVerification(ctx, st, list[i].ID)
			if err != nil {
				return nil, err
			}
			if v != nil && v.OK {
				if reasons[list[i].ID] == "" {
					reasons[list[i].ID] = "newest verified"
				}
				break
			}
		}
	}
	p := &Plan{Keep: []Decision{}, Delete: []Decision{}}
	var oldestKept *catalog.Manifest
	for _, m := range all {
		d := Decision{ID: m.ID, Kind: m.Kind, End: m.EndTime, Reason: reasons[m.ID]}
		if d.Reason == "" {
			d.Reason = "outside the retention rules"
			p.Delete = append(p.Delete, d)
			continue
		}
		p.Keep = append(p.Keep, d)
		if m.Kind == catalog.KindPhysical {
			if oldestKept == nil || m.Physical.StartLSN != "" && lsnLess(m, oldestKept) {
				oldestKept = m
			}
		}
	}
	if oldestKept != nil {
		if err := planWAL(ctx, st, oldestKept, p); err != nil {
			return nil, err
		}
	}
	reaper := catalog.NewReaper(st, now)
	if p.Orphans, p.Unfinished, err = catalog.Orphans(ctx, st, reaper); err != nil {
		return nil, err
	}
	for _, e := range reaper.Errors {
		p.Warnings = append(p.Warnings, e.Error())
	}
	if p.Orphans == nil {
		p.Orphans = []string{}
	}
	if p.Unfinished == nil {
		p.Unfinished = []string{}
	}
	p.now = now
	return p, nil
}

func lsnLess(a, b *catalog.Manifest) bool {
	la, _ := wal.ParseLSN(a.Physical.StartLSN)
	lb, _ := wal.ParseLSN(b.Physical.StartLSN)
	return la < lb
}

// planWAL marks every archived segment before the oldest kept base
// backup's start segment. History files are always kept: they are tiny and
// recovery across timelines needs them.
func planWAL(ctx context.Context, st storage.Store, oldest *catalog.Manifest, p *Plan) error {
	size := oldest.Physical.WALSegmentSize
	first, ok := wal.ParseSegmentName(oldest.Physical.StartSegment, size)
	if !ok {
		return fmt.Errorf("backup %s: bad start segment %q", oldest.ID, oldest.Physical.StartSegment)
	}
	p.WALKeepFrom = oldest.Physical.StartSegment
	entries, err := (&wal.Archive{Store: st}).List(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name
		if len(name) > 24 && !wal.IsHistoryName(name) {
			name = name[:24] // .partial and .backup files follow their segment
		}
		s, ok := wal.ParseSegmentName(name, size)
		if !ok || s.No >= first.No {
			continue
		}
		p.WALDelete = append(p.WALDelete, e.Key)
		p.WALDeleteBytes += e.Size
	}
	sort.Strings(p.WALDelete)
	p.WALDeleteCount = len(p.WALDelete)
	return nil
}

// Prune carries out a plan: backups first (manifest before data), then
// orphans, then WAL, so that an interruption at any point leaves every
// listed backup whole and restorable. An orphan that cannot be checked is
// kept and reported; the rest of the plan goes on.
func Prune(ctx context.Context, st storage.Store, p *Plan) error {
	for _, d := range p.Delete {
		if err := catalog.Delete(ctx, st, d.ID); err != nil {
			return err
		}
	}
	var errs []error
	for _, id := range p.Orphans {
		if err := catalog.DeleteOrphan(ctx, st, id, p.now); err != nil {
			errs = append(errs, err)
		}
	}
	for _, key := range p.WALDelete {
		if err := st.Delete(ctx, key); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
	}
	return errors.Join(errs...)
}
