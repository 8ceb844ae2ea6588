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
	"github.com/drctl/drctl/engine/confcheck"
	"github.com/drctl/drctl/engine/schedule"
)

// Job types.
const (
	TypeBackup     = "backup"
	TypeBaseBackup = "basebackup"
	TypeVerify     = "verify"
	TypePrune      = "prune"
	TypeWALReceive = "wal-receive"
	// TypeDrill drills one process (drill: {process: P}); TypePolicy
	// judges every process's recovery objectives.
	TypeDrill  = "drill"
	TypePolicy = "policy"
)

// Webhook events.
const (
	EventJobFailed    = "job_failed"
	EventJobMissed    = "job_missed"
	EventJobRecovered = "job_recovered"
	EventWALLag       = "wal_lag"
	// EventObjectiveFailed: a process's recovery objective stopped holding
	// (once, until it holds again).
	EventObjectiveFailed = "objective_failed"
)

var allEvents = []string{EventJobFailed, EventJobMissed, EventJobRecovered, EventWALLag, EventObjectiveFailed}

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
	Process    string // the process a drill job drills
	Sandbox    string // a drill job's sandbox: "" (the config's, else local) or local, kubernetes
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

const typeList = "backup, basebackup, verify, prune, wal-receive, drill or policy"

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

// The keys each mapping may hold; anything else is a typo to report.
var (
	jobKeys = []string{"name", "type", "schedule", "dsn", "labels", "timeout", "retries", "retry_delay", "jitter",
		"verify", "prune", "wal-receive", "drill"}
	notifyKeys  = []string{"webhooks", "wal_lag_alert"}
	webhookKeys = []string{"url", "secret_file", "events"}
)

// ParseConfig reads the daemon's keys (listen, refresh, jobs, notify) of a
// configuration file; the other keys are cmd's. Every problem is reported,
// each with its line. file names the file in the error.
func ParseConfig(file string, data []byte) (*Config, error) {
	c := &Config{Listen: DefaultListen, Refresh: DefaultRefresh}
	p := &confcheck.Problems{}
	root := confcheck.Root(data, p)
	if root == nil {
		if p.Count() > 0 {
			return nil, &ConfigError{file, p.List}
		}
		return c, nil
	}
	for k, v := range confcheck.Pairs(root) {
		switch k.Value {
		case "listen":
			c.Listen = confcheck.Scalar(p, v, "listen")
			if _, _, err := net.SplitHostPort(c.Listen); err != nil {
				p.Add(v, "listen %q: want host:port (e.g. %s)", c.Listen, DefaultListen)
			}
		case "refresh":
			c.Refresh = confcheck.Duration(p, v, "refresh")
			if c.Refresh < time.Second {
				p.Add(v, "refresh: at least 1s")
			}
		case "jobs":
			c.Jobs = parseJobs(p, v)
		case "notify":
			c.Notify = parseNotify(p, v)
		}
	}
	if len(p.List) > 0 {
		// What could be read comes back too, for more checks by the caller.
		return c, &ConfigError{file, p.List}
	}
	return c, nil
}

func parseJobs(p *confcheck.Problems, n *yaml.Node) []Job {
	if !confcheck.Seq(p, n, "jobs") {
		return nil
	}
	var jobs []Job
	names := map[string]int{}
	for _, jn := range n.Content {
		j := Job{Line: jn.Line, Timeout: DefaultTimeout, RetryDelay: DefaultRetryDelay}
		if !confcheck.Mapping(p, jn, "job", jobKeys) {
			continue
		}
		var sched *yaml.Node
		var typeNode *yaml.Node
		extra := map[string]*yaml.Node{}
		for k, v := range confcheck.Pairs(jn) {
			switch k.Value {
			case "name":
				j.Name = confcheck.Scalar(p, v, "name")
			case "type":
				j.Type, typeNode = confcheck.Scalar(p, v, "type"), v
			case "schedule":
				sched = v
			case "dsn":
				j.DSN = confcheck.Scalar(p, v, "dsn")
			case "labels":
				if err := v.Decode(&j.Labels); err != nil {
					p.Add(v, "labels: want a mapping of names to values")
				}
				for lk := range j.Labels {
					if lk == "" || strings.ContainsAny(lk, "=,") || lk == "job" {
						p.Add(v, "labels: %q cannot be a label name here (job= is set by the daemon)", lk)
					}
				}
			case "timeout":
				before := p.Count()
				if j.Timeout = confcheck.Duration(p, v, "timeout"); j.Timeout <= 0 && p.Count() == before {
					p.Add(v, "timeout must be positive")
				}
			case "retries":
				j.Retries = confcheck.Integer(p, v, "retries", 0, 10)
			case "retry_delay":
				j.RetryDelay = confcheck.Duration(p, v, "retry_delay")
			case "jitter":
				j.Jitter = confcheck.Duration(p, v, "jitter")
			case TypeVerify, TypePrune, TypeWALReceive, TypeDrill:
				extra[k.Value] = v
			}
		}
		where := fmt.Sprintf("job %q", j.Name)
		switch {
		case j.Name == "":
			p.Add(jn, "job: a name is required")
		case !catalog.ValidJobName(j.Name):
			p.Add(jn, "%s: a name is lowercase letters, digits and dashes ([a-z0-9-]+, at most 63)", where)
		case names[j.Name] > 0:
			p.Add(jn, "%s: the name is already used by the job at line %d", where, names[j.Name])
		default:
			names[j.Name] = jn.Line
		}
		switch j.Type {
		case TypeBackup, TypeBaseBackup, TypeVerify, TypePrune, TypeWALReceive, TypeDrill, TypePolicy:
		case "":
			p.Add(jn, "%s: a type is required (%s)", where, typeList)
		default:
			p.Add(typeNode, "%s: unknown type %q (%s)", where, j.Type, typeList)
		}
		if j.Type == TypeWALReceive {
			if sched != nil {
				p.Add(sched, "%s: wal-receive runs always: no schedule", where)
			}
		} else if sched == nil {
			if j.Type != "" {
				p.Add(jn, "%s: a schedule is required (cron fields, @every 15m, @hourly...)", where)
			}
		} else if s, err := schedule.Parse(confcheck.Scalar(p, sched, "schedule")); err != nil {
			p.Add(sched, "%s: %v", where, err)
		} else {
			j.Schedule = s
			if period := s.Period(time.Now()); j.Jitter >= period {
				p.Add(sched, "%s: jitter %s is not shorter than the schedule's period (%s)", where, j.Jitter, period)
			}
		}
		for key, v := range extra {
			if key != j.Type && j.Type != "" {
				p.Add(v, "%s: %q settings given to a job of type %s", where, key, j.Type)
				continue
			}
			switch key {
			case TypeVerify:
				if confcheck.Mapping(p, v, "verify", []string{"all"}) {
					for k, vv := range confcheck.Pairs(v) {
						if err := vv.Decode(&j.VerifyAll); err != nil {
							p.Add(vv, "verify: %s: want true or false", k.Value)
						}
					}
				}
			case TypePrune:
				if confcheck.Mapping(p, v, "prune", []string{"keep_last", "keep_within"}) {
					for k, vv := range confcheck.Pairs(v) {
						if k.Value == "keep_last" {
							j.KeepLast = confcheck.Integer(p, vv, "keep_last", 1, 100000)
						} else {
							j.KeepWithin = confcheck.Duration(p, vv, "keep_within")
						}
					}
				}
			case TypeDrill:
				if confcheck.Mapping(p, v, "drill", []string{"process", "sandbox"}) {
					for kk, vv := range confcheck.Pairs(v) {
						if kk.Value == "process" {
							j.Process = confcheck.Scalar(p, vv, "drill process")
							continue
						}
						switch j.Sandbox = confcheck.Scalar(p, vv, "drill sandbox"); j.Sandbox {
						case "local", "kubernetes":
						default:
							p.Add(vv, "%s: drill sandbox %q: want local or kubernetes", where, j.Sandbox)
						}
					}
				}
			case TypeWALReceive:
				if confcheck.Mapping(p, v, "wal-receive", []string{"slot"}) {
					for _, vv := range confcheck.Pairs(v) {
						j.Slot = confcheck.Scalar(p, vv, "slot")
					}
				}
			}
		}
		if j.Type == TypePrune && j.KeepLast == 0 && j.KeepWithin == 0 {
			p.Add(jn, "%s: prune needs keep_last or keep_within", where)
		}
		if j.Type == TypeDrill && j.Process == "" {
			p.Add(jn, "%s: a drill job names its process: drill: {process: NAME}", where)
		}
		if j.Type == TypeWALReceive && j.Slot == "" {
			j.Slot = "drctl"
		}
		jobs = append(jobs, j)
	}
	return jobs
}

func parseNotify(p *confcheck.Problems, n *yaml.Node) Notify {
	var out Notify
	if !confcheck.Mapping(p, n, "notify", notifyKeys) {
		return out
	}
	for k, v := range confcheck.Pairs(n) {
		switch k.Value {
		case "wal_lag_alert":
			out.WALLagAlert = confcheck.Duration(p, v, "wal_lag_alert")
		case "webhooks":
			if !confcheck.Seq(p, v, "webhooks") {
				continue
			}
			for _, wn := range v.Content {
				if !confcheck.Mapping(p, wn, "webhook", webhookKeys) {
					continue
				}
				var w Webhook
				for wk, wv := range confcheck.Pairs(wn) {
					switch wk.Value {
					case "url":
						w.URL = confcheck.Scalar(p, wv, "url")
						u, err := url.Parse(w.URL)
						if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
							p.Add(wv, "webhook url %s: want an http(s) URL", redactURL(w.URL))
						}
					case "secret_file":
						path := confcheck.Scalar(p, wv, "secret_file")
						secret, err := os.ReadFile(path)
						switch {
						case err != nil:
							p.Add(wv, "webhook secret_file %s: %v", path, errors.Unwrap(err))
						case len(strings.TrimSpace(string(secret))) == 0:
							p.Add(wv, "webhook secret_file %s is empty", path)
						}
						w.Secret = []byte(strings.TrimSpace(string(secret)))
					case "events":
						if err := wv.Decode(&w.Events); err != nil {
							p.Add(wv, "webhook events: want a list")
						}
						for _, e := range w.Events {
							if !slices.Contains(allEvents, e) {
								p.Add(wv, "webhook events: unknown event %q (known: %s)", e, strings.Join(allEvents, ", "))
							}
						}
					}
				}
				if w.URL == "" {
					p.Add(wn, "webhook: url is required")
				}
				out.Webhooks = append(out.Webhooks, w)
			}
		}
	}
	return out
}
