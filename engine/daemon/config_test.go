package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const fullConfig = `repo: s3://bucket/prefix
listen: 127.0.0.1:9187
refresh: 10s
jobs:
  - name: odoo-dump
    type: backup
    schedule: "0 */6 * * *"
    dsn: "host=db dbname=odoo"
    labels: {process: finance}
    timeout: 2h
    retries: 2
    jitter: 5m
  - name: base
    type: basebackup
    schedule: "CRON_TZ=Europe/Paris 30 2 * * *"
  - name: check
    type: verify
    schedule: "@every 15m"
    verify: {all: true}
  - name: retention
    type: prune
    schedule: "@daily"
    prune: {keep_last: 7, keep_within: 14d}
  - name: stream
    type: wal-receive
    wal-receive: {slot: drctl}
notify:
  webhooks:
    - url: https://hooks.example.com/drctl
      secret_file: SECRET
      events: [job_failed, job_missed, job_recovered, wal_lag]
  wal_lag_alert: 5m
`

func TestParseConfig(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("s3cr3t\n"), 0o600)
	c, err := ParseConfig("drctl.yaml", []byte(strings.Replace(fullConfig, "SECRET", secret, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9187" || c.Refresh != 10*time.Second || len(c.Jobs) != 5 {
		t.Fatalf("config: %+v", c)
	}
	j := c.Jobs[0]
	if j.Name != "odoo-dump" || j.Type != TypeBackup || j.Schedule.String() != "0 */6 * * *" || j.DSN != "host=db dbname=odoo" ||
		j.Labels["process"] != "finance" || j.Timeout != 2*time.Hour || j.Retries != 2 || j.Jitter != 5*time.Minute || j.Line != 5 {
		t.Fatalf("job: %+v", j)
	}
	if !c.Jobs[2].VerifyAll || c.Jobs[3].KeepLast != 7 || c.Jobs[3].KeepWithin != 14*24*time.Hour || c.Jobs[4].Slot != "drctl" || c.Jobs[4].Schedule != nil {
		t.Fatalf("type settings: %+v", c.Jobs[2:])
	}
	if w := c.Notify.Webhooks[0]; string(w.Secret) != "s3cr3t" || !w.Wants(EventWALLag) || c.Notify.WALLagAlert != 5*time.Minute {
		t.Fatalf("notify: %+v", c.Notify)
	}
	// No daemon keys: the defaults.
	c, err = ParseConfig("x", []byte("repo: file:///tmp/r\n"))
	if err != nil || c.Listen != DefaultListen || len(c.Jobs) != 0 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}

// Every problem is reported, each with its line.
func TestConfigErrorsNameTheirLines(t *testing.T) {
	bad := `listen: nowhere
jobs:
  - name: odoo-dump
    type: backup
    schedule: "0 */6 * * *"
    retires: 2
  - name: odoo-dump
    type: backup
    schedule: "61 * * * *"
  - name: Bad_Name
    type: backups
    schedule: "@hourly"
  - name: slow
    type: verify
    schedule: "@every 1h"
    timeout: 2 hours
  - name: receive
    type: wal-receive
    schedule: "@hourly"
  - name: prune
    type: prune
    schedule: "@daily"
    verify: {all: true}
notify:
  webhooks:
    - url: ftp://example.com
      secret_file: /nonexistent/secret
      events: [job_exploded]
`
	_, err := ParseConfig("drctl.yaml", []byte(bad))
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v", err)
	}
	want := []string{
		`line 1: listen "nowhere"`,
		`line 6: job: unknown key "retires"`,
		`line 7: job "odoo-dump": the name is already used by the job at line 3`,
		`line 9: job "odoo-dump": schedule "61 * * * *"`,
		`line 10: job "Bad_Name": a name is lowercase`,
		`line 11: job "Bad_Name": unknown type "backups"`,
		`line 16: timeout: duration "2 hours"`,
		`line 19: job "receive": wal-receive runs always: no schedule`,
		`line 23: job "prune": "verify" settings given to a job of type prune`,
		`line 20: job "prune": prune needs keep_last or keep_within`,
		`line 26: webhook url ftp://example.com: want`,
		`line 27: webhook secret_file /nonexistent/secret: no such file`,
		`line 28: webhook events: unknown event "job_exploded"`,
	}
	for _, w := range want {
		found := false
		for _, p := range ce.Problems {
			found = found || strings.HasPrefix(p, w)
		}
		if !found {
			t.Errorf("no problem %q in:\n%s", w, strings.Join(ce.Problems, "\n"))
		}
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(ce.Problems), len(want), strings.Join(ce.Problems, "\n"))
	}
	if _, err := ParseConfig("x", []byte("jobs: [\n")); err == nil {
		t.Fatal("broken YAML accepted")
	}
}
