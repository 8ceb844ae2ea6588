package schedule

import (
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func nexts(s *Schedule, from time.Time, n int) []time.Time {
	var out []time.Time
	for range n {
		from = s.Next(from)
		out = append(out, from.UTC())
	}
	return out
}

func mustParse(t *testing.T, spec string) *Schedule {
	t.Helper()
	s, err := Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sameTimes(t *testing.T, what string, got []time.Time, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
	for i := range want {
		if !got[i].Equal(utc(want[i])) {
			t.Fatalf("%s: run %d at %s, want %s (all: %v)", what, i, got[i], want[i], got)
		}
	}
}

func TestCronFields(t *testing.T) {
	s := mustParse(t, "0 */6 * * *")
	sameTimes(t, "every 6 hours", nexts(s, utc("2026-11-27T05:59:59Z"), 3),
		"2026-11-27T06:00:00Z", "2026-11-27T12:00:00Z", "2026-11-27T18:00:00Z")
	if p := s.Period(utc("2026-11-27T01:00:00Z")); p != 6*time.Hour {
		t.Fatalf("period %s", p)
	}
	// Exactly on a scheduled time: the next one, strictly after.
	sameTimes(t, "on the minute", nexts(s, utc("2026-11-27T06:00:00Z"), 1), "2026-11-27T12:00:00Z")
	sameTimes(t, "@hourly", nexts(mustParse(t, "@hourly"), utc("2026-11-27T06:10:00Z"), 2), "2026-11-27T07:00:00Z", "2026-11-27T08:00:00Z")
	// Day of month 31 skips short months.
	sameTimes(t, "31st", nexts(mustParse(t, "0 0 31 * *"), utc("2026-11-01T00:00:00Z"), 2), "2026-12-31T00:00:00Z", "2027-01-31T00:00:00Z")
}

func TestEvery(t *testing.T) {
	s := mustParse(t, "@every 15m")
	start := utc("2026-11-27T10:07:00Z")
	// Aligned on the epoch: every daemon agrees on the times.
	sameTimes(t, "@every 15m", nexts(s, start, 3), "2026-11-27T10:15:00Z", "2026-11-27T10:30:00Z", "2026-11-27T10:45:00Z")
	sameTimes(t, "@every 3s", nexts(mustParse(t, "@every 3s"), utc("2026-11-27T10:07:01Z"), 2), "2026-11-27T10:07:03Z", "2026-11-27T10:07:06Z")
	if p := s.Period(start); p != 15*time.Minute {
		t.Fatalf("period %s", p)
	}
	for _, bad := range []string{"@every 0s", "@every 500ms", "0 0 30 2 *", "@every soon", "61 * * * *", "* * * *", "* * * * * *", "", "@fortnightly", "CRON_TZ=Mars/Base 0 * * * *"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// Daylight saving under CRON_TZ: Paris goes from 2:00 to 3:00 on
// 2026-03-29 and from 3:00 back to 2:00 on 2026-10-25.
func TestDaylightSaving(t *testing.T) {
	daily := mustParse(t, "CRON_TZ=Europe/Paris 30 2 * * *")
	// Spring: 2:30 does not exist on the 29th; it runs at 3:30 CEST, not
	// a day later.
	sameTimes(t, "spring, daily 2:30", nexts(daily, utc("2026-03-27T12:00:00Z"), 4),
		"2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z")
	// Autumn: 2:30 happens twice; both run.
	sameTimes(t, "autumn, daily 2:30", nexts(daily, utc("2026-10-24T12:00:00Z"), 3),
		"2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-26T01:30:00Z")
	// Hourly keeps real time: no hour skipped, none doubled.
	hourly := mustParse(t, "CRON_TZ=Europe/Paris 0 * * * *")
	sameTimes(t, "autumn, hourly", nexts(hourly, utc("2026-10-24T23:30:00Z"), 4),
		"2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z")
	sameTimes(t, "spring, hourly", nexts(hourly, utc("2026-03-28T23:30:00Z"), 3),
		"2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z")
	// West of UTC the skipped time runs late too: New York skips 2:00-3:00
	// on 2026-03-08; 2:30 runs at 3:30 EDT (07:30 UTC), not 1:30 EST.
	ny := mustParse(t, "CRON_TZ=America/New_York 30 2 * * *")
	sameTimes(t, "New York spring, daily 2:30", nexts(ny, utc("2026-03-07T12:00:00Z"), 3),
		"2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z")
	// A wall-clock time in its zone, not UTC's.
	sameTimes(t, "New York midnight", nexts(mustParse(t, "CRON_TZ=America/New_York 0 0 * * *"), utc("2026-11-27T00:00:00Z"), 1), "2026-11-27T05:00:00Z")
}

func TestCatchup(t *testing.T) {
	s := mustParse(t, "0 * * * *")
	last := utc("2026-11-27T10:00:00Z")
	if due, missed := Catchup(s, last, utc("2026-11-27T10:59:00Z")); !due.IsZero() || missed != 0 {
		t.Fatalf("nothing passed: due %s, missed %d", due, missed)
	}
	if due, missed := Catchup(s, last, utc("2026-11-27T11:30:00Z")); !due.Equal(utc("2026-11-27T11:00:00Z")) || missed != 1 {
		t.Fatalf("one passed: due %s, missed %d", due, missed)
	}
	// Down for a day and a half: one run, for the newest time, and 36 missed.
	if due, missed := Catchup(s, last, utc("2026-11-28T22:10:00Z")); !due.Equal(utc("2026-11-28T22:00:00Z")) || missed != 36 {
		t.Fatalf("down 36 h: due %s, missed %d", due, missed)
	}
	if due, missed := Catchup(s, time.Time{}, utc("2026-11-28T22:10:00Z")); !due.IsZero() || missed != 0 {
		t.Fatal("a job that never ran owes nothing")
	}
	// Counting stops; the due time is still the newest.
	every := mustParse(t, "@every 1s")
	now := utc("2026-12-27T10:00:00Z")
	due, missed := Catchup(every, last, now)
	if missed != maxCount || now.Sub(due) > time.Second || due.After(now) {
		t.Fatalf("a month of @every 1s: due %s, missed %d", due, missed)
	}
	// After a run that overran the next times: one run makes up for them.
	if next, passed := After(s, last, utc("2026-11-27T12:20:00Z")); !next.Equal(utc("2026-11-27T12:00:00Z")) || passed != 2 {
		t.Fatalf("overran: next %s, passed %d", next, passed)
	}
	if next, passed := After(s, last, utc("2026-11-27T10:20:00Z")); !next.Equal(utc("2026-11-27T11:00:00Z")) || passed != 0 {
		t.Fatalf("on time: next %s, passed %d", next, passed)
	}
}

func TestJitterAndBackoff(t *testing.T) {
	// The bounds, with the extremes a random source can return.
	for _, r := range []func(int64) int64{func(int64) int64 { return 0 }, func(n int64) int64 { return n - 1 }} {
		if j := Jitter(r, 5*time.Minute); j < 0 || j > 5*time.Minute {
			t.Fatalf("jitter %s outside [0, 5m]", j)
		}
	}
	if Jitter(func(n int64) int64 { return n - 1 }, 5*time.Minute) != 5*time.Minute {
		t.Fatal("the upper bound is not reachable")
	}
	if Jitter(func(int64) int64 { panic("called") }, 0) != 0 {
		t.Fatal("no jitter configured, yet a delay")
	}
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := Backoff(i+1, 30*time.Second, 5*time.Minute); got != w {
			t.Fatalf("retry %d: %s, want %s", i+1, got, w)
		}
	}
	if Backoff(1000, time.Second, time.Minute) != time.Minute {
		t.Fatal("backoff overflows its limit")
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "14d": 14 * 24 * time.Hour, "1d12h": 36 * time.Hour, "2h30m": 150 * time.Minute} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %s, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "d", "-1d", "5 days", "1w", "-5m"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) accepted", bad)
		}
	}
}
