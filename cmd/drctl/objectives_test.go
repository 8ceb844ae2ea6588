package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drctl/drctl/testrig"
)

// drillDirs lists the local drill sandboxes.
func drillDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("drctl-drills-%d", os.Geteuid()), "drctl-drill-*"))
	return dirs
}

// serversOf lists the processes whose command line names dir.
func serversOf(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(strings.ReplaceAll(string(raw), "\x00", " "), dir) {
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(raw), "\x00", " "))
		}
	}
	return out
}

// TestRecoveryObjectives: two processes on real PostgreSQL 15 and the real
// S3 server — pos-sync (pitr) and finance (logical). The policy check, the
// drills (passing, failing a check, over the RTO, killed, interrupted),
// the gate refusing and then passing, and a restore of exactly the state
// at the gate.
func TestRecoveryObjectives(t *testing.T) {
	r := newDaemonRig(t, true, "archive_timeout=1")
	r.pg.Exec(t, "postgres", "CREATE DATABASE pos")
	r.pg.Exec(t, "postgres", "CREATE DATABASE finance")
	r.pg.Exec(t, "pos", "CREATE TABLE pos_order (id serial PRIMARY KEY, write_date timestamptz NOT NULL DEFAULT now()); INSERT INTO pos_order SELECT FROM generate_series(1, 1000)")
	r.pg.Exec(t, "finance", "CREATE TABLE ledger (id serial PRIMARY KEY, amount numeric NOT NULL); INSERT INTO ledger (amount) SELECT g FROM generate_series(1, 100) g")
	// The point of sale keeps selling: WAL to archive, every second.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := connect(t, r.pg.DSN("pos"))
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
				conn.Exec(context.Background(), "INSERT INTO pos_order DEFAULT VALUES")
			}
		}
	}()
	var once sync.Once
	stopWriter := func() { once.Do(func() { close(stop); wg.Wait() }) }
	defer stopWriter()
	processes := `processes:
  - name: pos-sync
    description: Point-of-sale sync
    database: pos
    mode: pitr
    rpo: 20s
    rto: 10m
    drill: {max_age: 7d, timeout: 10m}
    checks:
      - {name: orders present, sql: "SELECT count(*) FROM pos_order", expect: ">= 1000"}
      - {name: fresh, sql: "SELECT max(write_date) FROM pos_order", expect: within_rpo}
  - name: finance
    description: Finance posting
    database: finance
    mode: logical
    rpo: 1h
    rto: RTO
    checks:
      - {name: ledger present, sql: "SELECT count(*) FROM ledger", expect: ">= 100"}
      - {name: no negative amounts, sql: "SELECT id, amount FROM ledger WHERE amount < 0", expect: none}
`
	cfg := r.config(t, "drctl.yaml", strings.Replace(processes, "RTO", "30m", 1))
	if res := mustRun(t, nil, "--config", cfg, "policy", "lint"); !strings.Contains(res.stdout, "pos-sync: pitr") {
		t.Fatalf("lint: %s", res.all())
	}
	bad := r.config(t, "bad.yaml", strings.Replace(strings.Replace(processes, "RTO", "30m", 1), "rpo: 1h", "rpo: an hour", 1)+"    drill: {timeout: 1m}\n")
	badLine := 0
	for i, l := range strings.Split(readFileT(t, bad), "\n") {
		if strings.Contains(l, "an hour") {
			badLine = i + 1
		}
	}
	if res := drctl(t, nil, "--config", bad, "policy", "lint"); res.code != 2 || !strings.Contains(res.stderr, fmt.Sprintf(`line %d: rpo: duration "an hour"`, badLine)) ||
		!strings.Contains(res.stderr, "drill timeout 1m0s is shorter than the RTO 30m0s") {
		t.Fatalf("lint of a bad file: exit %d\n%s", res.code, res.all())
	}
	// Objectives the configured jobs cannot reach.
	withJobs := r.config(t, "jobs.yaml", strings.Replace(processes, "RTO", "30m", 1)+`jobs:
  - {name: dump, type: backup, schedule: "0 */6 * * *", labels: {process: finance}}
  - {name: base, type: basebackup, schedule: "@daily", labels: {process: pos-sync}}
  - {name: drill-finance, type: drill, schedule: "@daily", timeout: 5m, drill: {process: finance}}
`)
	res := drctl(t, nil, "--config", withJobs, "policy", "lint")
	for _, want := range []string{`process "finance": rpo 1h0m0s is shorter than job "dump" can reach (a dump every 6h0m0s`,
		`job "drill-finance": timeout 5m0s is shorter than process "finance"'s drill timeout 1h0m0s`,
		`process "pos-sync": no drill job drills it`, `process "pos-sync": rpo 20s needs a wal-receive job`} {
		if res.code != 2 || !strings.Contains(res.stderr, want) {
			t.Fatalf("lint against the jobs: exit %d, want %q\n%s", res.code, want, res.all())
		}
	}
	// Nothing yet: every objective fails, in words.
	res = drctl(t, nil, "--config", cfg, "policy", "check")
	if res.code != 4 || !strings.Contains(res.stdout, "no base backup labelled process=pos-sync") || !strings.Contains(res.stdout, "no drill has been run") {
		t.Fatalf("check of an empty repository: exit %d\n%s", res.code, res.all())
	}
	mustRun(t, []string{"DRCTL_DSN=" + r.pg.DSN("pos")}, "--config", cfg, "basebackup", "--label", "process=pos-sync")
	dump := func() string {
		var b struct{ ID string }
		decodeJSON(t, mustRun(t, []string{"DRCTL_DSN=" + r.pg.DSN("finance")}, "--config", cfg, "backup", "--json", "--label", "process=finance").stdout, &b)
		mustRun(t, nil, "--config", cfg, "verify", b.ID)
		return b.ID
	}
	dump()
	// Fresh backups, no drill: the gate refuses, saying why.
	res = drctl(t, nil, "--config", cfg, "gate", "--process", "pos-sync", "--process", "finance", "--release", "r0")
	if res.code != 4 || !strings.Contains(res.stdout, "STOP") || !strings.Contains(res.stderr, "finance drill: no drill has been run") {
		t.Fatalf("gate without drills: exit %d\n%s", res.code, res.all())
	}
	// Drills.
	for _, p := range []string{"finance", "pos-sync"} {
		var d struct {
			Passed bool
			Phases []struct{ Name string }
			Checks []struct {
				Name   string
				Passed bool
				Saw    string
			}
		}
		res := mustRun(t, nil, "--config", cfg, "drill", "--process", p, "--json")
		decodeJSON(t, res.stdout, &d)
		if !d.Passed || len(d.Checks) != 2 || (p == "pos-sync" && len(d.Phases) != 3) {
			t.Fatalf("drill of %s: %s", p, res.stdout)
		}
	}
	if left := drillDirs(); len(left) != 0 {
		t.Fatalf("sandboxes left after drills: %v", left)
	}
	mustRun(t, nil, "--config", cfg, "policy", "check")
	// list and show say when each backup was last drilled.
	var list []struct {
		ID    string
		Kind  string
		Drill *struct {
			Process string
			Passed  bool
		}
	}
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "list", "--json").stdout, &list)
	drilled := map[string]bool{}
	for _, b := range list {
		if b.Drill != nil && b.Drill.Passed {
			drilled[b.Drill.Process+"/"+b.Kind] = true
		}
	}
	if !drilled["finance/logical"] || !drilled["pos-sync/physical"] {
		t.Fatalf("list --json drills: %+v", list)
	}
	if res := mustRun(t, nil, "--config", cfg, "show", "latest", "--kind", "logical"); !strings.Contains(res.stdout, "passed by drill") {
		t.Fatalf("show:\n%s", res.stdout)
	}

	// The archive stops: pos-sync's RPO fails, naming the measured lag.
	r.archiving(t, false)
	waitUntil(t, "the RPO of pos-sync fails", 90*time.Second, func() bool {
		res = drctl(t, nil, "--config", cfg, "policy", "check", "--process", "pos-sync")
		return res.code == 4
	})
	if !strings.Contains(res.stdout, "the newest WAL was archived") || !strings.Contains(res.stdout, "over the RPO of 20s") || !strings.Contains(res.stderr, "pos-sync rpo") {
		t.Fatalf("check once archiving stopped:\n%s", res.all())
	}
	// A gate that cannot make its recovery point says stop, and says why.
	res = drctl(t, nil, "--config", cfg, "gate", "--process", "pos-sync", "--release", "r-down", "--backup-now", "--wal-wait", "3s")
	if res.code != 4 || !strings.Contains(res.stdout, "recovery point not made") || !strings.Contains(res.stdout, "was not archived within 3s") {
		t.Fatalf("gate with archiving down: exit %d\n%s", res.code, res.all())
	}
	r.archiving(t, true)

	// The gate with a fresh recovery point: GO; then more writes. (The
	// point of sale pauses, so that the state at the gate is known.)
	stopWriter()
	posAtGate := r.pg.QueryInt(t, "pos", "SELECT count(*) FROM pos_order")
	res = mustRun(t, nil, "--config", cfg, "gate", "--process", "pos-sync", "--process", "finance", "--release", "r1", "--backup-now")
	if !strings.Contains(res.stdout, "GO") || !strings.Contains(res.stdout, "restore point drctl-before-r1-") {
		t.Fatalf("gate --backup-now:\n%s", res.all())
	}
	atGate := r.pg.QueryInt(t, "finance", "SELECT count(*) FROM ledger")
	r.pg.Exec(t, "finance", "INSERT INTO ledger (amount) SELECT g FROM generate_series(1, 50) g")
	r.pg.Exec(t, "pos", "INSERT INTO pos_order SELECT FROM generate_series(1, 50)")
	r.pg.Exec(t, "pos", "SELECT pg_switch_wal()")
	// The point of sale's rows at the gate: those committed before the
	// restore point, which the restored server must hold exactly.
	r.pg.Exec(t, "postgres", "CREATE DATABASE finance_at_gate")
	mustRun(t, nil, "--config", cfg, "restore", "--before-release", "r1", "--into", r.pg.DSN("finance_at_gate"), "--clean")
	if got := r.pg.QueryInt(t, "finance_at_gate", "SELECT count(*) FROM ledger"); got != atGate {
		t.Fatalf("finance restored before r1 holds %d rows, %d at the gate", got, atGate)
	}
	posWork := workDir(t, "pitr")
	dir := filepath.Join(posWork, "pos")
	t.Cleanup(func() { r.pg.Command("pg_ctl", "-D", dir, "-m", "immediate", "-w", "stop").Run() })
	port := testrig.FreePort(t)
	mustRun(t, nil, "--config", cfg, "restore", "--before-release", "r1", "--to", dir, "--start",
		"--dsn", fmt.Sprintf("user=%s password=%s dbname=pos", r.pg.User, r.pg.Password),
		"--start-option", fmt.Sprintf("port=%d", port), "--start-option", "listen_addresses=127.0.0.1", "--start-option", "unix_socket_directories=")
	restored := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=pos sslmode=disable", port, r.pg.User, r.pg.Password))
	var restoredCount int64
	if err := restored.QueryRow(context.Background(), "SELECT count(*) FROM pos_order").Scan(&restoredCount); err != nil {
		t.Fatal(err)
	}
	if restoredCount != posAtGate {
		t.Fatalf("pos restored before r1 holds %d orders, %d at the gate (%d now)", restoredCount, posAtGate, r.pg.QueryInt(t, "pos", "SELECT count(*) FROM pos_order"))
	}

	// A dump whose data breaks a check: the drill fails, naming it.
	r.pg.Exec(t, "finance", "INSERT INTO ledger (amount) VALUES (-42)")
	dump()
	res = drctl(t, nil, "--config", cfg, "drill", "--process", "finance")
	if res.code != 4 || !strings.Contains(res.stdout, "FAIL no negative amounts: expected none, saw 1 row: ") || !strings.Contains(res.stdout, "-42") {
		t.Fatalf("drill of bad data: exit %d\n%s", res.code, res.all())
	}
	res = drctl(t, nil, "--config", cfg, "gate", "--process", "finance")
	if res.code != 4 || !strings.Contains(res.stderr, "checks failed: no negative amounts") {
		t.Fatalf("gate after a failed drill: exit %d\n%s", res.code, res.all())
	}
	r.pg.Exec(t, "finance", "DELETE FROM ledger WHERE amount < 0")
	dump()
	dumped := time.Now()
	// An RTO no restore can meet: the drill fails on time alone, and the
	// rto objective names the measured time.
	tight := r.config(t, "tight.yaml", strings.Replace(processes, "RTO", "1ms", 1))
	res = drctl(t, nil, "--config", tight, "drill", "--process", "finance")
	if res.code != 4 || !strings.Contains(res.stderr, "the restore took longer than the RTO") {
		t.Fatalf("drill over the RTO: exit %d\n%s", res.code, res.all())
	}
	res = drctl(t, nil, "--config", tight, "policy", "check", "--process", "finance")
	if res.code != 4 || !strings.Contains(res.stdout, "over the RTO of 1ms") {
		t.Fatalf("check after a drill over the RTO: exit %d\n%s", res.code, res.all())
	}

	// A dump older than the RPO (1s; the newest dump is made older than
	// that for sure): the gate refuses, with the lag.
	time.Sleep(time.Until(dumped.Add(1500 * time.Millisecond)))
	stale := r.config(t, "stale.yaml", strings.Replace(strings.Replace(processes, "RTO", "30m", 1), "rpo: 1h", "rpo: 1s", 1))
	res = drctl(t, nil, "--config", stale, "gate", "--process", "finance", "--release", "r2")
	if res.code != 4 || !strings.Contains(res.stderr, "finance rpo: the newest verified dump was taken") || !strings.Contains(res.stderr, "over the RPO of 1s") {
		t.Fatalf("gate with a stale dump: exit %d\n%s", res.code, res.all())
	}

	// The report: the page and the same for machines.
	page := filepath.Join(t.TempDir(), "objectives.html")
	var rep struct {
		Processes []struct {
			Name   string
			RPO    []struct{ Seconds float64 }
			Drills []struct{ Passed bool }
		}
		Gates []struct {
			Release string
			Passed  bool
		}
	}
	decodeJSON(t, mustRun(t, nil, "--config", cfg, "report", "--html", page, "--since", "1d", "--json").stdout, &rep)
	if len(rep.Processes) != 2 || rep.Processes[0].Name != "pos-sync" || len(rep.Processes[0].Drills) < 1 || len(rep.Processes[0].RPO) == 0 ||
		len(rep.Processes[1].Drills) < 3 || len(rep.Gates) < 3 {
		t.Fatalf("report --json: %+v", rep)
	}
	if html := readFileT(t, page); !strings.Contains(html, "pos-sync") || !strings.Contains(html, "<svg") || !strings.Contains(html, "r1") {
		t.Fatalf("report page:\n%.500s", html)
	}

	// A drill killed outright leaves its sandbox; the next drill removes
	// it, server and all. One ended by SIGINT leaves nothing.
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		cmd := exec.Command(drctlBin, "--config", cfg, "drill", "--process", "pos-sync")
		cmd.Env = append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var sandbox string
		waitUntil(t, "the drill's server runs", 60*time.Second, func() bool {
			for _, d := range drillDirs() {
				if _, err := os.Stat(filepath.Join(d, "data", "postmaster.pid")); err == nil {
					sandbox = d
					return true
				}
			}
			return false
		})
		cmd.Process.Signal(sig)
		cmd.Wait()
		if sig == syscall.SIGKILL {
			if len(serversOf(sandbox)) == 0 {
				t.Fatal("the killed drill's server is not running: the test shows nothing")
			}
			mustRun(t, nil, "--config", cfg, "drill", "--process", "finance")
		}
		if _, err := os.Stat(sandbox); !os.IsNotExist(err) {
			t.Fatalf("after %s: sandbox %s is still there", sig, sandbox)
		}
		waitUntil(t, "the sandbox's server is gone", 30*time.Second, func() bool { return len(serversOf(sandbox)) == 0 })
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
