// Package schedule is the daemon's time arithmetic: cron schedules (robfig
// cron's standard syntax, descriptors, @every and a CRON_TZ= prefix), the
// runs missed while no daemon was up, jitter and retry backoff. Everything
// is a pure function of the times given: the daemon's clock is injected.
package schedule

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is a parsed job schedule.
type Schedule struct {
	spec string
	s    cron.Schedule
	// Under CRON_TZ, wall is the same fields read as wall-clock times and
	// loc their zone: see Next.
	wall cron.Schedule
	loc  *time.Location
}

var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse reads a schedule: five cron fields, a descriptor (@hourly, @daily,
// @every 15m...), optionally after CRON_TZ=Zone/Name.
func Parse(spec string) (*Schedule, error) {
	out, err := parse(spec)
	if err != nil {
		return nil, err
	}
	if out.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("schedule %q never comes (no such date)", spec)
	}
	return out, nil
}

func parse(spec string) (*Schedule, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("empty schedule")
	}
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("schedule %q: @every needs a duration of at least 1s", spec)
		}
	}
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	out := &Schedule{spec: spec, s: s}
	for _, prefix := range []string{"CRON_TZ=", "TZ="} {
		if rest, ok := strings.CutPrefix(spec, prefix); ok {
			zone, fields, _ := strings.Cut(rest, " ")
			if out.loc, err = time.LoadLocation(zone); err != nil {
				return nil, fmt.Errorf("schedule %q: %w", spec, err)
			}
			if out.wall, err = parser.Parse(strings.TrimSpace(fields)); err != nil {
				return nil, fmt.Errorf("schedule %q: %w", spec, err)
			}
		}
	}
	return out, nil
}

// String is the schedule as written.
func (s *Schedule) String() string { return s.spec }

// Next is the first scheduled time strictly after t.
//
// Under CRON_TZ, a time that daylight saving skips still runs: robfig cron
// alone skips "30 2 * * *" on the day clocks go from 2:00 to 3:00, a day
// without a backup; here it runs at 3:30, as Vixie cron does. A time that
// happens twice, when clocks go back, runs at both (a second backup is
// harmless, a missing one is not); hourly and finer schedules keep real
// time throughout.
func (s *Schedule) Next(t time.Time) time.Time {
	if every, ok := s.s.(cron.ConstantDelaySchedule); ok {
		// @every d runs at the multiples of d since the Unix epoch, not d
		// after whenever a daemon started: every daemon on a repository
		// agrees on the times, so a job lease settles who runs each one.
		d := every.Delay
		return time.Unix(0, (t.UnixNano()/int64(d)+1)*int64(d)).In(t.Location())
	}
	next := s.s.Next(t)
	if s.wall == nil {
		return next
	}
	local := t.In(s.loc)
	w := time.Date(local.Year(), local.Month(), local.Day(), local.Hour(), local.Minute(), local.Second(), local.Nanosecond(), time.UTC)
	for range 4 {
		w = s.wall.Next(w)
		if w.IsZero() {
			break
		}
		at := inZone(w, s.loc)
		if at.After(t) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			break
		}
	}
	return next
}

// Period is the time between the first two runs after t: what "missed by
// more than one period" and "not succeeded within twice its period" mean.
func (s *Schedule) Period(t time.Time) time.Duration {
	a := s.Next(t)
	return s.Next(a).Sub(a)
}

// inZone is the wall-clock time w (read as UTC fields) in loc. A time
// that daylight saving skips comes out late by the gap (2:30 is 3:30 on
// the night clocks go from 2:00 to 3:00), whichever side of UTC the zone
// is: time.Date alone moves it one way or the other.
func inZone(w time.Time, loc *time.Location) time.Time {
	at := time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), 0, loc)
	if at.Hour() == w.Hour() && at.Minute() == w.Minute() {
		return at
	}
	// In a gap: the same wall time read with the offsets before and after
	// the change; the later instant is the one past the gap.
	_, before := at.Add(-6 * time.Hour).Zone()
	_, after := at.Add(6 * time.Hour).Zone()
	a := w.Add(-time.Duration(before) * time.Second)
	b := w.Add(-time.Duration(after) * time.Second)
	if b.After(a) {
		a = b
	}
	return time.Unix(a.Unix(), 0).In(loc)
}

// maxCount bounds the counting of missed runs (an @every 1s job down for
// a year): beyond it, the count says "at least".
const maxCount = 10000

// Catchup says what a daemon starting at now owes a job whose last run was
// scheduled at last: due is the newest scheduled time at or before now
// that did not run (zero when none passed), and missed how many scheduled
// times passed without a run (at most maxCount). One run for due makes up
// for all of them; missed > 1 means the job was missed by more than one
// period.
func Catchup(s *Schedule, last, now time.Time) (due time.Time, missed int) {
	if last.IsZero() {
		return time.Time{}, 0
	}
	for t := s.Next(last); !t.IsZero() && !t.After(now); t = s.Next(t) {
		due = t
		missed++
		if missed >= maxCount {
			// Jump to the newest passed time without counting further.
			for u := s.Next(now.Add(-s.Period(now) * 2)); !u.IsZero() && !u.After(now); u = s.Next(u) {
				due = u
			}
			break
		}
	}
	return due, missed
}

// After is the next scheduled time after a run for slot ended at now: the
// slot after it, or, when that passed during the run, the newest time that
// passed (one run makes up for all of them) — with how many were passed.
func After(s *Schedule, slot, now time.Time) (next time.Time, passed int) {
	next = s.Next(slot)
	if next.After(now) {
		return next, 0
	}
	due, n := Catchup(s, slot, now)
	return due, n
}

// Jitter is a delay drawn uniformly from [0, max] with rnd (rand.Int64N).
func Jitter(rnd func(int64) int64, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(rnd(int64(max) + 1))
}

// Backoff is the delay before retry number attempt (1 for the first
// retry): base, doubling each time, never more than limit.
func Backoff(attempt int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// ParseDuration reads a Go duration ("90s", "2h30m") or a number of days
// ("14d", "1d12h").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("duration %q: want e.g. 90s, 15m, 2h or 14d", s)
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("duration %q: want e.g. 90s, 15m, 2h or 14d", s)
	}
	return days + d, nil
}
