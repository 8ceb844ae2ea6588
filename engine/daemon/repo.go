package daemon

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage"
)

// refreshLoop reads the repository's state for the metrics every
// Refresh, and after each run.
func (d *Daemon) refreshLoop(ctx context.Context) {
	var tracker walTracker
	lagAlerted := false
	for {
		cfg := d.Config()
		rctx, cancel := context.WithTimeout(ctx, 2*storeTimeout)
		state, err := d.readRepo(rctx, &tracker)
		cancel()
		if ctx.Err() != nil {
			return
		}
		d.refreshBeat.Store(d.opt.Clock.Now().UnixNano())
		if err != nil {
			d.opt.Logger.Error("could not read the repository's state", "error", err)
		} else {
			d.ready.Store(true)
		}
		d.Metrics.repo.set(state)
		if alert := cfg.Notify.WALLagAlert; alert > 0 && err == nil && !state.lastWAL.IsZero() {
			lag := d.opt.Clock.Now().Sub(state.lastWAL)
			switch {
			case lag > alert && !lagAlerted:
				lagAlerted = true
				d.opt.Logger.Warn("the newest archived WAL is older than wal_lag_alert", "lag", lag.Round(time.Second), "wal_lag_alert", alert)
				d.notify.send(Event{Event: EventWALLag, Time: d.opt.Clock.Now().UTC(), Host: d.host, LagSeconds: lag.Seconds(),
					Error: fmt.Sprintf("newest archived WAL stored %s ago (alert at %s)", lag.Round(time.Second), alert)})
			case lag <= alert:
				lagAlerted = false
			}
		}
		for _, j := range cfg.Jobs {
			// Another daemon's runs show here too (the replica that lost
			// the lease must not look stale to the alerts).
			sctx, cancel := storeCtx(ctx)
			s, err := catalog.ReadJobState(sctx, d.opt.Store, j.Name)
			cancel()
			if err == nil {
				d.Metrics.fromState(d.sane(s))
			}
			if j.Type != TypeWALReceive || d.opt.ReceiveLag == nil {
				continue
			}
			if n, err := d.opt.ReceiveLag(ctx, j); err == nil {
				d.Metrics.receiveLag.WithLabelValues(j.Name).Set(float64(n))
			} else {
				// A stale value would claim a lag nobody measured.
				d.Metrics.receiveLag.DeleteLabelValues(j.Name)
				d.opt.Logger.Warn("could not measure the receiver's lag", "job", j.Name, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.refresh:
		case <-d.opt.Clock.After(cfg.Refresh):
		}
	}
}

// readRepo reads the recovery points and the newest archived WAL.
func (d *Daemon) readRepo(ctx context.Context, t *walTracker) (repoState, error) {
	s := repoState{recoveryPoint: map[[2]string]time.Time{}}
	all, err := catalog.List(ctx, d.opt.Store, d.opt.Verifier)
	if err != nil {
		return s, fmt.Errorf("list backups: %w", err)
	}
	newest, err := t.newest(ctx, d.opt.Store)
	if err != nil {
		return s, fmt.Errorf("list WAL: %w", err)
	}
	s.lastWAL = newest
	physical := false
	future := d.opt.Clock.Now().Add(maxSkew)
	for _, m := range all {
		if m.StartTime.After(future) || m.EndTime.After(future) {
			continue // a forged or broken manifest must not pin the recovery point
		}
		switch m.Kind {
		case catalog.KindLogical:
			k := [2]string{m.Database, catalog.KindLogical}
			if m.StartTime.After(s.recoveryPoint[k]) {
				s.recoveryPoint[k] = m.StartTime
			}
		case catalog.KindPhysical:
			if !newest.IsZero() && !m.EndTime.After(newest) {
				physical = true
			}
		}
	}
	if physical {
		s.recoveryPoint[[2]string{"*", catalog.KindPhysical}] = newest
	}
	s.ok, s.refreshed = true, d.opt.Clock.Now()
	return s, nil
}

// walTracker finds when the newest WAL was stored without listing the
// whole archive each time: after one full listing it lists only the
// newest segment's log (256 segments of 16 MiB), the next log, and the
// next timeline.
type walTracker struct {
	newestName string // the highest segment name seen
	narrow     int    // narrow listings since the last full one
}

// fullEvery: a full listing now and then, so that one planted key named
// far ahead cannot keep the tracker looking in the wrong place.
const fullEvery = 60

func (t *walTracker) newest(ctx context.Context, st storage.Store) (time.Time, error) {
	prefixes := []string{wal.Prefix}
	if t.narrow++; t.narrow >= fullEvery {
		t.newestName, t.narrow = "", 0
	}
	if t.newestName != "" {
		tl, _ := strconv.ParseUint(t.newestName[:8], 16, 32)
		log, _ := strconv.ParseUint(t.newestName[8:16], 16, 32)
		prefixes = []string{
			wal.Prefix + t.newestName[:16],
			wal.Prefix + t.newestName[:8] + fmt.Sprintf("%08X", log+1),
			wal.Prefix + fmt.Sprintf("%08X", tl+1),
		}
	}
	var newest time.Time
	for _, p := range prefixes {
		objs, err := st.List(ctx, p)
		if err != nil {
			return time.Time{}, err
		}
		for _, o := range objs {
			e, ok := wal.ParseKey(o.Key)
			if !ok {
				continue
			}
			if o.ModTime.After(newest) {
				newest = o.ModTime
			}
			if wal.IsSegmentName(e.Name) && e.Name > t.newestName {
				t.newestName = e.Name
			}
		}
	}
	if newest.IsZero() && t.newestName != "" {
		// The newest log was pruned or rewritten: list everything again.
		t.newestName = ""
		return t.newest(ctx, st)
	}
	return newest, nil
}
