// Package daemon is drctl's sidecar: it runs backup, base backup, verify,
// prune and wal-receive jobs on schedules, one run of a job at a time
// across every daemon on the repository (a job lease), keeps run records
// in the repository, serves Prometheus metrics and health probes, and
// sends webhooks. What a job does is the Runner's business (cmd runs drctl
// itself); time comes from an injected clock.
package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/schedule"
)

// Job types.
const (
	TypeBackup     = "backup"
	TypeBaseBackup = "basebackup"
	TypeVerify     = "verify"
	TypePrune      = "prune"
	TypeWALReceive = "wal-receive"
)

// Webhook events.
const (
	EventJobFailed    = "job_failed"
	EventJobMissed    = "job_missed"
	EventJobRecovered = "job_recovered"
	EventWALLag       = "wal_lag"
)

var allEvents = []string{EventJobFailed, EventJobMissed, EventJobRecovered, EventWALLag}

// Config is the daemon's part of the configuration file.
type Config struct {
	Listen string
	// Refresh is how often the repository's state (recovery points, the
	// newest archived WAL) is read for the metrics.
	Refresh time.Duration
	Jobs    []Job
	Notify  Notify
}

// Job is one scheduled job.
type Job struct {
	Name     string
	Type     string
	Schedule *schedule.Schedule // nil for wal-receive: it runs always
	DSN      string
	Labels   map[string]string
	Timeout  time.Duration
	Retries  int
	// RetryDelay is the wait before the first retry; it doubles.
	RetryDelay time.Duration
	Jitter     time.Duration
	// Type-specific settings.
	VerifyAll  bool
	KeepLast   int
	KeepWithin time.Duration
	Slot       string
	Line       int
}

// Notify is where alerts go.
type Notify struct {
	Webhooks    []Webhook
	WALLagAlert time.Duration
}

// Webhook is one receiver of events.
type Webhook struct {
	URL    string
	Secret []byte // HMAC-SHA256 key; empty: unsigned
	Events []string
}

// Wants reports whether the webhook takes event.
func (w Webhook) Wants(event string) bool {
	return len(w.Events) == 0 || slices.Contains(w.Events, event)
}

// Defaults.
const (
	DefaultListen     = "127.0.0.1:9187"
	DefaultRefresh    = 30 * time.Second
	DefaultTimeout    = 6 * time.Hour
	DefaultRetryDelay = 30 * time.Second
)

// ConfigError lists every problem of a configuration file, each with its
// line.
type ConfigError struct {
	File     string
	Problems []string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("config %s: %s", e.File, strings.Join(e.Problems, "; "))
}

type problems struct{ list []string }

func (p *problems) add(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.list = append(p.list, fmt.Sprintf("line %d: %s", line, fmt.Sprintf(format, args...)))
}

// The keys each mapping may hold; anything else is a typo to report.
var (
	jobKeys = []string{"name", "type", "schedule", "dsn", "labels", "timeout", "retries", "retry_delay", "jitter",
		"verify", "prune", "wal-receive"}
	notifyKeys  = []string{"webhooks", "wal_lag_alert"}
	webhookKeys = []string{"url", "secret_file", "events"}
)

// ParseConfig reads the daemon's keys (listen, refresh, jobs, notify) of a
// configuration file; the other keys are cmd's. Every problem is reported,
// each with its line. file names the file in the error.
func ParseConfig(file string, data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &ConfigError{file, []string{err.Error()}}
	}
	c := &Config{Listen: DefaultListen, Refresh: DefaultRefresh}
	p := &problems{}
	if len(doc.Content) == 0 {
		return c, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.add(root, "the file must be a mapping of settings")
		return nil, &ConfigError{file, p.list}
	}
	for k, v := range pairs(root) {
		switch k.Value {
		case "listen":
			c.Listen = scalar(p, v, "listen")
			if _, _, err := net.SplitHostPort(c.Listen); err != nil {
				p.add(v, "listen %q: want host:port (e.g. %s)", c.Listen, DefaultListen)
			}
		case "refresh":
			c.Refresh = duration(p, v, "refresh")
			if c.Refresh < time.Second {
				p.add(v, "refresh: at least 1s")
			}
		case "jobs":
			c.Jobs = parseJobs(p, v)
		case "notify":
			c.Notify = parseNotify(p, v)
		}
	}
	if len(p.list) > 0 {
		// What could be read comes back too, for more checks by the caller.
		return c, &ConfigError{file, p.list}
	}
	return c, nil
}

// pairs iterates a mapping node's keys and values.
func pairs(m *yaml.Node) func(func(*yaml.Node, *yaml.Node) bool) {
	return func(yield func(*yaml.Node, *yaml.Node) bool) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !yield(m.Content[i], m.Content[i+1]) {
				return
			}
		}
	}
}

func mapping(p *problems, n *yaml.Node, what string, allowed []string) bool {
	if n.Kind != yaml.MappingNode {
		p.add(n, "%s: want a mapping", what)
		return false
	}
	seen := map[string]bool{}
	for k := range pairs(n) {
		if !slices.Contains(allowed, k.Value) {
			p.add(k, "%s: unknown key %q (known: %s)", what, k.Value, strings.Join(allowed, ", "))
		}
		if seen[k.Value] {
			p.add(k, "%s: %q given twice", what, k.Value)
		}
		seen[k.Value] = true
	}
	return true
}

func scalar(p *problems, n *yaml.Node, what string) string {
	if n.Kind != yaml.ScalarNode {
		p.add(n, "%s: want a single value", what)
		return ""
	}
	return n.Value
}

func duration(p *problems, n *yaml.Node, what string) time.Duration {
	d, err := schedule.ParseDuration(scalar(p, n, what))
	if err != nil {
		p.add(n, "%s: %v", what, err)
	}
	return d
}

func integer(p *problems, n *yaml.Node, what string, lo, hi int) int {
	var v int
	if err := n.Decode(&v); err != nil || v < lo || v > hi {
		p.add(n, "%s: want a whole number from %d to %d", what, lo, hi)
	}
	return v
}

func parseJobs(p *problems, n *yaml.Node) []Job {
	if n.Kind != yaml.SequenceNode {
		p.add(n, "jobs: want a list")
		return nil
	}
	var jobs []Job
	names := map[string]int{}
	for _, jn := range n.Content {
		j := Job{Line: jn.Line, Timeout: DefaultTimeout, RetryDelay: DefaultRetryDelay}
		if !mapping(p, jn, "job", jobKeys) {
			continue
		}
		var sched *yaml.Node
		var typeNode *yaml.Node
		extra := map[string]*yaml.Node{}
		for k, v := range pairs(jn) {
			switch k.Value {
			case "name":
				j.Name = scalar(p, v, "name")
			case "type":
				j.Type, typeNode = scalar(p, v, "type"), v
			case "schedule":
				sched = v
			case "dsn":
				j.DSN = scalar(p, v, "dsn")
			case "labels":
				if err := v.Decode(&j.Labels); err != nil {
					p.add(v, "labels: want a mapping of names to values")
				}
				for lk := range j.Labels {
					if lk == "" || strings.ContainsAny(lk, "=,") || lk == "job" {
						p.add(v, "labels: %q cannot be a label name here (job= is set by the daemon)", lk)
					}
				}
			case "timeout":
				before := len(p.list)
				if j.Timeout = duration(p, v, "timeout"); j.Timeout <= 0 && len(p.list) == before {
					p.add(v, "timeout must be positive")
				}
			case "retries":
				j.Retries = integer(p, v, "retries", 0, 10)
			case "retry_delay":
				j.RetryDelay = duration(p, v, "retry_delay")
			case "jitter":
				j.Jitter = duration(p, v, "jitter")
			case TypeVerify, TypePrune, TypeWALReceive:
				extra[k.Value] = v
			}
		}
		where := fmt.Sprintf("job %q", j.Name)
		switch {
		case j.Name == "":
			p.add(jn, "job: a name is required")
		case !catalog.ValidJobName(j.Name):
			p.add(jn, "%s: a name is lowercase letters, digits and dashes ([a-z0-9-]+, at most 63)", where)
		case names[j.Name] > 0:
			p.add(jn, "%s: the name is already used by the job at line %d", where, names[j.Name])
		default:
			names[j.Name] = jn.Line
		}
		switch j.Type {
		case TypeBackup, TypeBaseBackup, TypeVerify, TypePrune, TypeWALReceive:
		case "":
			p.add(jn, "%s: a type is required (backup, basebackup, verify, prune or wal-receive)", where)
		default:
			p.add(typeNode, "%s: unknown type %q (backup, basebackup, verify, prune or wal-receive)", where, j.Type)
		}
		if j.Type == TypeWALReceive {
			if sched != nil {
				p.add(sched, "%s: wal-receive runs always: no schedule", where)
			}
		} else if sched == nil {
			if j.Type != "" {
				p.add(jn, "%s: a schedule is required (cron fields, @every 15m, @hourly...)", where)
			}
		} else if s, err := schedule.Parse(scalar(p, sched, "schedule")); err != nil {
			p.add(sched, "%s: %v", where, err)
		} else {
			j.Schedule = s
			if period := s.Period(time.Now()); j.Jitter >= period {
				p.add(sched, "%s: jitter %s is not shorter than the schedule's period (%s)", where, j.Jitter, period)
			}
		}
		for key, v := range extra {
			if key != j.Type && j.Type != "" {
				p.add(v, "%s: %q settings given to a job of type %s", where, key, j.Type)
				continue
			}
			switch key {
			case TypeVerify:
				if mapping(p, v, "verify", []string{"all"}) {
					for k, vv := range pairs(v) {
						if err := vv.Decode(&j.VerifyAll); err != nil {
							p.add(vv, "verify: %s: want true or false", k.Value)
						}
					}
				}
			case TypePrune:
				if mapping(p, v, "prune", []string{"keep_last", "keep_within"}) {
					for k, vv := range pairs(v) {
						if k.Value == "keep_last" {
							j.KeepLast = integer(p, vv, "keep_last", 1, 100000)
						} else {
							j.KeepWithin = duration(p, vv, "keep_within")
						}
					}
				}
			case TypeWALReceive:
				if mapping(p, v, "wal-receive", []string{"slot"}) {
					for _, vv := range pairs(v) {
						j.Slot = scalar(p, vv, "slot")
					}
				}
			}
		}
		if j.Type == TypePrune && j.KeepLast == 0 && j.KeepWithin == 0 {
			p.add(jn, "%s: prune needs keep_last or keep_within", where)
		}
		if j.Type == TypeWALReceive && j.Slot == "" {
			j.Slot = "drctl"
		}
		jobs = append(jobs, j)
	}
	return jobs
}

func parseNotify(p *problems, n *yaml.Node) Notify {
	var out Notify
	if !mapping(p, n, "notify", notifyKeys) {
		return out
	}
	for k, v := range pairs(n) {
		switch k.Value {
		case "wal_lag_alert":
			out.WALLagAlert = duration(p, v, "wal_lag_alert")
		case "webhooks":
			if v.Kind != yaml.SequenceNode {
				p.add(v, "webhooks: want a list")
				continue
			}
			for _, wn := range v.Content {
				if !mapping(p, wn, "webhook", webhookKeys) {
					continue
				}
				var w Webhook
				for wk, wv := range pairs(wn) {
					switch wk.Value {
					case "url":
						w.URL = scalar(p, wv, "url")
						u, err := url.Parse(w.URL)
						if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
							p.add(wv, "webhook url %s: want an http(s) URL", redactURL(w.URL))
						}
					case "secret_file":
						path := scalar(p, wv, "secret_file")
						secret, err := os.ReadFile(path)
						switch {
						case err != nil:
							p.add(wv, "webhook secret_file %s: %v", path, errors.Unwrap(err))
						case len(strings.TrimSpace(string(secret))) == 0:
							p.add(wv, "webhook secret_file %s is empty", path)
						}
						w.Secret = []byte(strings.TrimSpace(string(secret)))
					case "events":
						if err := wv.Decode(&w.Events); err != nil {
							p.add(wv, "webhook events: want a list")
						}
						for _, e := range w.Events {
							if !slices.Contains(allEvents, e) {
								p.add(wv, "webhook events: unknown event %q (known: %s)", e, strings.Join(allEvents, ", "))
							}
						}
					}
				}
				if w.URL == "" {
					p.add(wn, "webhook: url is required")
				}
				out.Webhooks = append(out.Webhooks, w)
			}
		}
	}
	return out
}
