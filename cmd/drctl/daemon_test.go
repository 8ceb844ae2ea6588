package main_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

type daemonRun struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	addr   string
	done   chan struct{}
	code   int
}

// startDaemon runs drctl daemon and waits until it is ready.
func startDaemon(t *testing.T, cfg, addr string, env []string, extra ...string) *daemonRun {
	t.Helper()
	cmd := exec.Command(drctlBin, append([]string{"--config", cfg, "daemon", "--listen", addr}, extra...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DRCTL_") && !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, "AWS_EC2_METADATA_DISABLED=true"), env...)
	d := &daemonRun{cmd: cmd, stderr: &lockedBuffer{}, addr: addr, done: make(chan struct{})}
	cmd.Stderr, cmd.Stdout = d.stderr, d.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		d.code = cmd.ProcessState.ExitCode()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
	})
	waitUntil(t, "the daemon is ready", 60*time.Second, func() bool {
		select {
		case <-d.done:
			t.Fatalf("the daemon exited %d:\n%s", d.code, d.stderr)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return d
}

// stop sends SIGTERM and returns the exit status and how long it took.
func (d *daemonRun) stop(t *testing.T) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the daemon did not stop within 90 s of SIGTERM:\n%s", d.stderr)
	}
	return d.code, time.Since(start)
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting until %s", timeout, what)
}

// scrape reads /metrics: series (as printed, labels sorted) to values.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// webhookSink records the events it receives and whether each carried a
// valid signature.
type webhookSink struct {
	srv    *httptest.Server
	secret []byte
	mu     sync.Mutex
	events []sinkEvent
}

type sinkEvent struct {
	Event    string    `json:"event"`
	Job      string    `json:"job"`
	Time     time.Time `json:"time"`
	Error    string    `json:"error"`
	BackupID string    `json:"backup_id"`
	Host     string    `json:"host"`
	signed   bool
}

func newWebhookSink(t *testing.T, secret string) *webhookSink {
	s := &webhookSink{secret: []byte(secret)}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, s.secret)
		mac.Write(body)
		var e sinkEvent
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("webhook body %q: %v", body, err)
		}
		e.signed = r.Header.Get("X-Drctl-Signature") == "sha256="+hex.EncodeToString(mac.Sum(nil))
		s.mu.Lock()
		s.events = append(s.events, e)
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *webhookSink) find(event, job string) (sinkEvent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if e.Event == event && e.Job == job {
			return e, true
		}
	}
	return sinkEvent{}, false
}

// daemonRig is a primary archiving WAL to the S3 server, and the files a
// daemon's configuration names.
type daemonRig struct {
	pg      *testrig.Postgres
	srv     *testrig.S3
	keys    *testrig.Keys
	work    string
	repo    string
	envYAML string
}

func newDaemonRig(t *testing.T, archive bool, extra ...string) *daemonRig {
	t.Helper()
	r := &daemonRig{srv: testrig.StartS3(t), work: workDir(t, "daemon")}
	r.keys = testrig.NewKeys(t, r.work)
	os.Chmod(r.keys.RecipientsFile, 0o644)
	r.repo = r.srv.RepoURL("daemon")
	for _, kv := range r.srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		r.envYAML += fmt.Sprintf("  %s: %q\n", k, v)
	}
	r.archiving(t, true)
	archCfg := filepath.Join(r.work, "archive.yaml")
	settings := []string{"wal_level=replica", "max_wal_senders=5"}
	if archive {
		settings = append(settings, "archive_mode=on", fmt.Sprintf("archive_command=%s --config %s wal-push %%p", drctlBin, archCfg))
	}
	r.pg = testrig.StartPostgres(t, append(settings, extra...)...)
	return r
}

// archiving writes archive_command's configuration: the repository, or
// (on=false) one that does not exist, so that every wal-push fails until
// it is written again. (archive_command itself is a server option: ALTER
// SYSTEM cannot change it.)
func (r *daemonRig) archiving(t *testing.T, on bool) {
	t.Helper()
	repo := r.repo
	if !on {
		repo = "file:///nonexistent/archive-stopped"
	}
	if err := os.WriteFile(filepath.Join(r.work, "archive.yaml"), []byte(fmt.Sprintf("repo: %s\nrecipients_file: %s\nenv:\n%s", repo, r.keys.RecipientsFile, r.envYAML)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// config writes a daemon configuration: the repository settings, then
// rest (listen:, jobs:, notify:...).
func (r *daemonRig) config(t *testing.T, name, rest string) string {
	t.Helper()
	path := filepath.Join(r.work, name)
	body := fmt.Sprintf("repo: %s\nrecipients_file: %s\nidentity_file: %s\ndsn: %q\nenv:\n%s%s", r.repo,
		r.keys.RecipientsFile, r.keys.IdentityFile, r.pg.DSN("postgres"), r.envYAML, rest)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (r *daemonRig) store(t *testing.T) storage.Store {
	t.Helper()
	client, err := s3store.NewClient(context.Background(), r.srv.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	st, err := s3store.New(client, s3store.Options{Bucket: r.srv.Bucket, Prefix: "daemon"})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func freeAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)) }

// TestDaemon is the sidecar's life: scheduled logical and base backups
// with WAL archived, a job whose database is missing (job_failed, signed;
// job_recovered once it exists), metrics over HTTP and scraped by a real
// Prometheus that evaluates the alert rules and the dashboard, a reload,
// archiving stopped (the lag grows, wal_lag), and a restart that keeps
// what monitoring saw.
func TestDaemon(t *testing.T) {
	r := newDaemonRig(t, true)
	r.pg.Exec(t, "postgres", "CREATE DATABASE shop")
	r.pg.Exec(t, "shop", "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 1000) g")
	sink := newWebhookSink(t, "webhook-secret-1")
	secretFile := filepath.Join(r.work, "webhook.secret")
	os.WriteFile(secretFile, []byte("webhook-secret-1\n"), 0o600)
	notify := fmt.Sprintf("notify:\n  webhooks:\n    - url: %s/hook\n      secret_file: %s\n  wal_lag_alert: 4s\n", sink.srv.URL, secretFile)
	jobs := fmt.Sprintf(`refresh: 1s
jobs:
  - name: dump
    type: backup
    schedule: "@every 3s"
    dsn: %q
    labels: {process: finance}
  - name: base
    type: basebackup
    schedule: "@every 3s"
    timeout: 1m
  - name: later
    type: backup
    schedule: "@every 3s"
    dsn: %q
  - name: check
    type: verify
    schedule: "@every 5s"
    verify: {all: true}
  - name: objectives
    type: policy
    schedule: "@every 3s"
  - name: drill-finance
    type: drill
    schedule: "@every 5s"
    drill: {process: finance}
  - name: retention
    type: prune
    schedule: "@every 5s"
    prune: {keep_last: 100, keep_within: 1d}
`, r.pg.DSN("shop"), r.pg.DSN("later"))
	processes := `processes:
  - name: finance
    database: shop
    mode: logical
    rpo: 1h
    rto: 30m
    checks:
      - {name: orders present, sql: "SELECT count(*) FROM orders", expect: ">= 1000"}
`
	notify += processes
	cfg := r.config(t, "drctl.yaml", jobs+notify)
	if res := drctl(t, nil, "--config", cfg, "daemon", "--check"); res.code != 0 || !strings.Contains(res.stdout, "7 jobs") {
		t.Fatalf("--check of a good file: exit %d\n%s", res.code, res.all())
	}
	addr := freeAddr(t)
	d := startDaemon(t, cfg, addr, nil)
	series := func(name string, labels ...string) string {
		if len(labels) == 0 {
			return name
		}
		var parts []string
		for i := 0; i+1 < len(labels); i += 2 {
			parts = append(parts, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
		}
		return name + "{" + strings.Join(parts, ",") + "}"
	}
	runs := func(m map[string]float64, job, result string) float64 {
		return m[series("drctl_job_runs_total", "job", job, "result", result)]
	}
	var m map[string]float64
	waitUntil(t, "backups, base backups and a failure are in the metrics", 90*time.Second, func() bool {
		m = scrape(t, addr)
		_, wal := m["drctl_wal_last_archived_timestamp_seconds"]
		_, logical := m[series("drctl_recovery_point_timestamp_seconds", "database", "shop", "kind", "logical")]
		_, physical := m[series("drctl_recovery_point_timestamp_seconds", "database", "*", "kind", "physical")]
		_, drilled := m[series("drctl_drill_duration_seconds", "process", "finance")]
		_, judged := m[series("drctl_objective_met", "objective", "rto", "process", "finance")]
		return runs(m, "dump", "success") >= 2 && runs(m, "base", "success") >= 1 && runs(m, "later", "failure") >= 1 && wal && logical && physical &&
			runs(m, "check", "success") >= 1 && runs(m, "retention", "success") >= 1 && drilled && judged
	})
	if m[series("drctl_backup_stored_bytes", "job", "dump")] <= 0 || m[series("drctl_backup_raw_bytes", "job", "base")] <= 0 ||
		m[series("drctl_job_last_success_timestamp_seconds", "job", "dump")] <= 0 || m[series("drctl_job_last_failure_timestamp_seconds", "job", "later")] <= 0 ||
		m[series("drctl_job_period_seconds", "job", "dump")] != 3 || m["drctl_repository_up"] != 1 || m["go_goroutines"] <= 0 || m["process_resident_memory_bytes"] <= 0 {
		t.Fatalf("metrics: %v", m)
	}
	// The failing job: a signed webhook, one clear log line per failed run.
	waitUntil(t, "job_failed arrives", 30*time.Second, func() bool { _, ok := sink.find("job_failed", "later"); return ok })
	if e, _ := sink.find("job_failed", "later"); !e.signed || !strings.Contains(e.Error, `database "later" does not exist`) || e.Host == "" {
		t.Fatalf("job_failed event %+v", e)
	}
	logs := d.stderr.String()
	var failLines []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=ERROR") && strings.Contains(line, "job=later") {
			failLines = append(failLines, line)
		}
	}
	if len(failLines) == 0 || !strings.Contains(failLines[0], `msg="run failed"`) || !strings.Contains(failLines[0], "does not exist") ||
		!strings.Contains(failLines[0], "run_id=") {
		t.Fatalf("no clear log line for the failed run:\n%s", logs)
	}
	if n := float64(len(failLines)); n > runs(scrape(t, addr), "later", "failure") {
		t.Fatalf("%v error lines for fewer failed runs:\n%s", n, strings.Join(failLines, "\n"))
	}
	noSecrets(t, logs, r.pg.Password, r.srv.SecretKey, "webhook-secret-1")

	// A real Prometheus scrapes the daemon: every dashboard expression
	// and every alert rule's metrics return data, and the failing job's
	// alert is pending.
	checkWithPrometheus(t, addr)

	// The missing database appears: the job recovers.
	r.pg.Exec(t, "postgres", "CREATE DATABASE later")
	waitUntil(t, "job_recovered arrives", 60*time.Second, func() bool { _, ok := sink.find("job_recovered", "later"); return ok })
	if e, _ := sink.find("job_recovered", "later"); !e.signed || e.BackupID == "" {
		t.Fatalf("job_recovered event %+v", e)
	}
	// The backups are there, labelled.
	var list []struct {
		ID     string            `json:"id"`
		Kind   string            `json:"kind"`
		Labels map[string]string `json:"labels"`
	}
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "list", "--json").stdout, &list)
	kinds := map[string]int{}
	for _, b := range list {
		kinds[b.Labels["job"]+"/"+b.Kind]++
		if b.Labels["job"] == "dump" && b.Labels["process"] != "finance" {
			t.Fatalf("labels of %s: %v", b.ID, b.Labels)
		}
	}
	if kinds["dump/logical"] < 2 || kinds["base/physical"] < 1 || kinds["later/logical"] < 1 {
		t.Fatalf("backups by job: %v", kinds)
	}

	// Reload without the base backups and the recovered job; then the
	// archive stops: the lag grows and wal_lag is sent.
	r.config(t, "drctl.yaml", strings.Split(jobs, "  - name: base")[0]+notify)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "the reload removes the jobs", 30*time.Second, func() bool {
		m := scrape(t, addr)
		_, base := m[series("drctl_job_running", "job", "base")]
		_, later := m[series("drctl_job_running", "job", "later")]
		return !base && !later && strings.Contains(d.stderr.String(), "configuration reloaded")
	})
	// A broken file is refused; the running configuration stays.
	os.WriteFile(cfg, []byte("jobs:\n  - name: Broken!\n"), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "the broken reload is refused", 30*time.Second, func() bool {
		return strings.Contains(d.stderr.String(), "configuration reload refused")
	})
	r.archiving(t, false)
	stopped := time.Now()
	before := scrape(t, addr)["drctl_wal_archive_lag_seconds"]
	time.Sleep(3 * time.Second)
	after := scrape(t, addr)
	if after["drctl_wal_archive_lag_seconds"] < before+2 {
		t.Fatalf("archive lag %v, then %v three seconds later", before, after["drctl_wal_archive_lag_seconds"])
	}
	if runs(after, "dump", "success") <= runs(m, "dump", "success") {
		t.Fatal("the dump job stopped running")
	}
	waitUntil(t, "wal_lag arrives", 30*time.Second, func() bool {
		e, ok := sink.find("wal_lag", "")
		return ok && e.Time.After(stopped.Add(-5*time.Second)) && e.signed
	})

	// A restart: what monitoring saw of the last runs is unchanged.
	if code, _ := d.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, d.stderr)
	}
	last := after
	calm := r.config(t, "drctl.yaml", strings.ReplaceAll(strings.Split(jobs, "  - name: base")[0], "@every 3s", "@hourly")+notify)
	d2 := startDaemon(t, calm, freeAddr(t), nil)
	waitUntil(t, "the state is read back", 30*time.Second, func() bool {
		_, ok := scrape(t, d2.addr)[series("drctl_job_last_success_timestamp_seconds", "job", "dump")]
		return ok
	})
	m2 := scrape(t, d2.addr)
	st := r.store(t)
	state, err := catalog.ReadJobState(context.Background(), st, "dump")
	if err != nil {
		t.Fatal(err)
	}
	if got := m2[series("drctl_job_last_success_timestamp_seconds", "job", "dump")]; got != float64(state.LastSuccess.UnixNano())/1e9 || got < last[series("drctl_job_last_success_timestamp_seconds", "job", "dump")] {
		t.Fatalf("after the restart the last success is %v; the repository says %s, before the restart %v", got, state.LastSuccess, last[series("drctl_job_last_success_timestamp_seconds", "job", "dump")])
	}
	if code, _ := d2.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// checkWithPrometheus starts Prometheus (Debian's package) scraping the
// daemon every second with the alert rules loaded, then queries every
// expression of the dashboard and the metrics of every alert rule.
func checkWithPrometheus(t *testing.T, daemonAddr string) {
	t.Helper()
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		testrig.Missing(t, "prometheus (Debian package prometheus; make deps installs it)")
	}
	dir := t.TempDir()
	rules, _ := filepath.Abs(filepath.Join(testrig.RepoRoot(), "deploy", "prometheus", "drctl-rules.yml"))
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: drctl
    honor_labels: true # the daemon's job label names its jobs
    static_configs:
      - targets: [%q]
`, rules, daemonAddr)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644)
	addr := freeAddr(t)
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	query := func(expr string) (int, error) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + urlQueryEscape(expr))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var body struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return 0, err
		}
		if body.Status != "success" {
			return 0, fmt.Errorf("%s", body.Error)
		}
		return len(body.Data.Result), nil
	}
	waitUntil(t, "Prometheus has scraped the daemon a few times", 60*time.Second, func() bool {
		n, err := query(`count_over_time(up{job="drctl"}[1m]) >= 5 and up{job="drctl"} == 1`)
		return err == nil && n == 1
	})
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	raw, err := os.ReadFile(filepath.Join(testrig.RepoRoot(), "deploy", "grafana", "drctl-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			// Grafana fills in the dashboard's instance variable: All.
			if n, err := query(strings.ReplaceAll(target.Expr, "$instance", ".*")); err != nil || n == 0 {
				t.Errorf("dashboard panel %q: %s returned %d series, %v", p.Title, target.Expr, n, err)
			}
		}
	}
	// Every metric the alert rules use exists.
	rulesText, _ := os.ReadFile(rules)
	var names []string
	for _, f := range strings.FieldsFunc(string(rulesText), func(r rune) bool {
		return !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}) {
		if strings.HasPrefix(f, "drctl_") || f == "process_start_time_seconds" {
			names = append(names, f)
		}
	}
	sort.Strings(names)
	if len(names) < 6 {
		t.Fatalf("found only %v in the rules", names)
	}
	for _, n := range names {
		if c, err := query(n); err != nil || c == 0 {
			t.Errorf("alert rules use %s, which Prometheus does not have (%d series, %v)", n, c, err)
		}
	}
	// The failing job's alert is pending (it fires after its for: 1m).
	waitUntil(t, "DrctlJobFailing is pending for job later", 30*time.Second, func() bool {
		n, err := query(`ALERTS{alertname="DrctlJobFailing", job="later"}`)
		return err == nil && n == 1
	})
	if n, _ := query(`ALERTS{alertname="DrctlJobFailing", job="dump"}`); n != 0 {
		t.Error("DrctlJobFailing is pending for a job that succeeds")
	}
	if strings.Contains(out.String(), "level=error") {
		t.Errorf("Prometheus logged errors:\n%s", out.String())
	}
}

func urlQueryEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// TestTwoDaemonsOneRepository runs two daemons with the same configuration
// on one repository for a minute: every scheduled time of the job runs
// exactly once, and no two runs overlap — by the job's records and by the
// backups' own start and end times.
func TestTwoDaemonsOneRepository(t *testing.T) {
	r := newDaemonRig(t, false)
	r.pg.Exec(t, "postgres", "CREATE DATABASE shop")
	r.pg.Exec(t, "shop", "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
	cfg := r.config(t, "drctl.yaml", fmt.Sprintf(`refresh: 5s
jobs:
  - name: dump
    type: backup
    schedule: "@every 3s"
    jitter: 1s
    dsn: %q
`, r.pg.DSN("shop")))
	a := startDaemon(t, cfg, freeAddr(t), nil)
	b := startDaemon(t, cfg, freeAddr(t), nil, "--log-format", "json")
	began := time.Now()
	time.Sleep(time.Minute)
	ma, mb := scrape(t, a.addr), scrape(t, b.addr)
	for _, d := range []*daemonRun{a, b} {
		if code, _ := d.stop(t); code != 0 {
			t.Fatalf("SIGTERM: exit %d\n%s", code, d.stderr)
		}
	}
	runs, err := catalog.ListJobRuns(context.Background(), r.store(t), "dump", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) < 15 {
		t.Fatalf("%d runs in a minute of @every 3s", len(runs))
	}
	seen := map[time.Time]bool{}
	hosts := map[string]int{}
	for i, run := range runs {
		if run.Result != catalog.RunSuccess {
			t.Fatalf("run %+v", run)
		}
		if seen[run.Scheduled] {
			t.Fatalf("scheduled time %s ran twice", run.Scheduled)
		}
		seen[run.Scheduled] = true
		hosts[run.Host]++
		if i > 0 && run.Start.Before(runs[i-1].End) {
			t.Fatalf("run %s started at %s, before run %s ended at %s", run.RunID, run.Start, runs[i-1].RunID, runs[i-1].End)
		}
	}
	first, last := runs[0].Scheduled, runs[len(runs)-1].Scheduled
	for at := first; !at.After(last); at = at.Add(3 * time.Second) {
		if !seen[at] {
			t.Fatalf("scheduled time %s never ran (first %s, last %s)", at, first, last)
		}
	}
	if first.Sub(began) > 5*time.Second {
		t.Fatalf("the first run was for %s, %s after the daemons started", first, first.Sub(began))
	}
	// The backups themselves never overlapped either.
	var list []struct {
		ID    string    `json:"id"`
		Start time.Time `json:"start_time"`
		End   time.Time `json:"end_time"`
	}
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "list", "--json").stdout, &list)
	sort.Slice(list, func(i, j int) bool { return list[i].Start.Before(list[j].Start) })
	if len(list) != len(runs) {
		t.Fatalf("%d backups for %d runs", len(list), len(runs))
	}
	for i := 1; i < len(list); i++ {
		if list[i].Start.Before(list[i-1].End) {
			t.Fatalf("backup %s started before %s ended", list[i].ID, list[i-1].ID)
		}
	}
	skipped := ma[`drctl_job_runs_total{job="dump",result="skipped"}`] + mb[`drctl_job_runs_total{job="dump",result="skipped"}`]
	if skipped == 0 || len(hosts) == 0 {
		t.Fatalf("no run was skipped by the other daemon (hosts %v)", hosts)
	}
	t.Logf("%d runs in %s: by daemon %v; %v skips", len(runs), last.Sub(first), hosts, skipped)
	// --log-format json: one object a line, with the run's fields.
	succeeded := 0
	for _, line := range strings.Split(strings.TrimSpace(b.stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["msg"] == "run succeeded" {
			succeeded++
			for _, k := range []string{"job", "run_id", "backup_id", "database", "time", "level"} {
				if rec[k] == nil || rec[k] == "" {
					t.Fatalf("log record lacks %s: %v", k, rec)
				}
			}
		}
	}
	if succeeded == 0 {
		t.Fatalf("no run succeeded on the JSON-logging daemon:\n%s", b.stderr)
	}
}

// TestDaemonSIGTERMDuringBaseBackup: a base backup slowed down by a
// distant store is running when SIGTERM comes. The daemon gives it the
// grace period, cancels it, and exits 0; nothing partial is listed, no
// upload or lease is left; the next start runs the job again.
func TestDaemonSIGTERMDuringBaseBackup(t *testing.T) {
	r := newDaemonRig(t, true)
	r.pg.Exec(t, "postgres", "CREATE TABLE filler AS SELECT g AS id, repeat(md5(g::text), 20) AS pad FROM generate_series(1, 100000) g")
	proxy := testrig.StartS3Proxy(t, r.srv.Endpoint, 7)
	proxyEnv := ""
	for _, kv := range proxy.Env(r.srv) {
		k, v, _ := strings.Cut(kv, "=")
		proxyEnv += fmt.Sprintf("  %s: %q\n", k, v)
	}
	saved := r.envYAML
	r.envYAML = proxyEnv
	cfg := r.config(t, "drctl.yaml", "refresh: 2s\njobs:\n  - name: base\n    type: basebackup\n    schedule: \"@every 1h\"\n")
	r.envYAML = saved
	// The job's last scheduled time passed while no daemon ran: it runs at
	// start.
	st := r.store(t)
	catalog.WriteJobState(context.Background(), st, catalog.JobState{Job: "base", LastScheduled: time.Now().Add(-90 * time.Minute).Truncate(time.Hour), LastResult: "success"})
	proxy.SetLatency(400 * time.Millisecond)
	d := startDaemon(t, cfg, freeAddr(t), nil, "--grace", "2s")
	waitUntil(t, "the base backup runs", 60*time.Second, func() bool {
		return scrape(t, d.addr)[`drctl_job_running{job="base"}`] == 1
	})
	time.Sleep(time.Second)
	code, took := d.stop(t)
	if code != 0 {
		t.Fatalf("SIGTERM during a base backup: exit %d\n%s", code, d.stderr)
	}
	if took > 2*time.Second+20*time.Second {
		t.Fatalf("the daemon took %s to stop with --grace 2s", took)
	}
	if !strings.Contains(d.stderr.String(), "grace period over") {
		t.Fatalf("the base backup finished within the grace period; slow it down more:\n%s", d.stderr)
	}
	proxy.SetLatency(0)
	var list []map[string]any
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "list", "--json").stdout, &list)
	if len(list) != 0 {
		t.Fatalf("a cancelled base backup is listed: %v", list)
	}
	uploads, err := r.srv.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &r.srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	if len(uploads.Uploads) != 0 {
		t.Fatalf("%d multipart uploads left behind", len(uploads.Uploads))
	}
	leases, err := st.List(context.Background(), "leases/")
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 0 {
		t.Fatalf("writer leases left: %v", leases)
	}
	runs, _ := catalog.ListJobRuns(context.Background(), st, "base", time.Time{}, time.Time{})
	if len(runs) != 1 || runs[0].Result != "cancelled" {
		t.Fatalf("records: %+v", runs)
	}
	// The next start runs it at once, and it completes.
	d2 := startDaemon(t, cfg, freeAddr(t), nil)
	waitUntil(t, "the base backup runs again", 120*time.Second, func() bool {
		return scrape(t, d2.addr)[`drctl_job_runs_total{job="base",result="success"}`] == 1
	})
	if code, _ := d2.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "list", "--json").stdout, &list)
	if len(list) != 1 || list[0]["kind"] != "physical" {
		t.Fatalf("after the restart: %v", list)
	}
}
