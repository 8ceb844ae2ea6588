package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/testrig"
)

// physRig is a primary archiving WAL with drctl wal-push into a file://
// repository, and the drctl environment to back it up and restore it.
type physRig struct {
	pg      *testrig.Postgres
	work    string
	repo    string
	archCfg string
	keys    *testrig.Keys
	env     []string
}

func newPhysRig(t *testing.T, extra ...string) *physRig {
	t.Helper()
	work, err := os.MkdirTemp("", "drctl-pitr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	os.Chmod(work, 0o755)
	r := &physRig{work: work, repo: filepath.Join(work, "repo")}
	r.keys = testrig.NewKeys(t, work)
	os.Chmod(r.keys.RecipientsFile, 0o644)
	for _, d := range []string{r.repo, filepath.Join(r.repo, ".drctl-tmp"), filepath.Join(r.repo, "wal")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	r.archCfg = filepath.Join(work, "archive.yaml")
	os.WriteFile(r.archCfg, []byte(fmt.Sprintf("repo: file://%s\nrecipients_file: %s\n", r.repo, r.keys.RecipientsFile)), 0o644)
	settings := append([]string{"wal_level=replica", "archive_mode=on", "max_wal_senders=5",
		"archive_command=" + r.archiveCommand()}, extra...)
	r.pg = testrig.StartPostgres(t, settings...)
	r.pg.GiveToServer(t, r.repo, filepath.Join(r.repo, ".drctl-tmp"), filepath.Join(r.repo, "wal"))
	r.env = []string{"DRCTL_REPO=file://" + r.repo, "DRCTL_AGE_RECIPIENTS_FILE=" + r.keys.RecipientsFile,
		"DRCTL_AGE_IDENTITY_FILE=" + r.keys.IdentityFile}
	return r
}

func (r *physRig) archiveCommand() string {
	return fmt.Sprintf("%s --config %s wal-push %%p", drctlBin, r.archCfg)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func scalar[T any](t *testing.T, conn *pgx.Conn, sql string) T {
	t.Helper()
	var v T
	if err := conn.QueryRow(context.Background(), sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// switchAndWaitArchived closes the current segment and waits until the
// archiver has stored it.
func switchAndWaitArchived(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	seg := scalar[string](t, conn, "SELECT pg_walfile_name(pg_switch_wal())")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var last *string
		var failed int64
		conn.QueryRow(context.Background(), "SELECT last_archived_wal, failed_count FROM pg_stat_archiver").Scan(&last, &failed)
		if last != nil && *last >= seg {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("segment %s was not archived within 60s: %s", seg, tailLog(t))
}

func tailLog(t *testing.T) string { return "(see the server log)" }

type marker struct {
	id             int
	before, after  time.Time // client clock around the commit
	lsnAfterCommit string
}

// insertMarkers commits n markers, one transaction each, 150ms apart.
func insertMarkers(t *testing.T, conn *pgx.Conn, prefix string, n int) []marker {
	t.Helper()
	var out []marker
	for i := 1; i <= n; i++ {
		time.Sleep(150 * time.Millisecond)
		m := marker{before: time.Now()}
		if err := conn.QueryRow(context.Background(), "INSERT INTO markers (note) VALUES ($1) RETURNING id", fmt.Sprintf("%s-%d", prefix, i)).Scan(&m.id); err != nil {
			t.Fatal(err)
		}
		m.after = time.Now()
		m.lsnAfterCommit = scalar[string](t, conn, "SELECT pg_current_wal_lsn()::text")
		out = append(out, m)
	}
	return out
}

func pgTime(ts time.Time) string { return ts.UTC().Format("2006-01-02 15:04:05.999999+00") }

// restoreAndStart restores the latest base backup into a new directory,
// starts it on a new port and returns a connection to it.
func (r *physRig) restoreAndStart(t *testing.T, name string, args ...string) (*pgx.Conn, string, map[string]any) {
	t.Helper()
	dir := filepath.Join(r.work, name)
	port := testrig.FreePort(t)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", port, r.pg.User, r.pg.Password)
	full := append([]string{"restore", "latest", "--to", dir, "--start", "--json", "--dsn", dsn,
		"--start-option", fmt.Sprintf("port=%d", port), "--start-option", "listen_addresses=127.0.0.1",
		"--start-option", "unix_socket_directories="}, args...)
	t.Cleanup(func() {
		r.pg.Command("pg_ctl", "-D", dir, "-m", "immediate", "-w", "stop").Run()
	})
	res := mustRun(t, r.env, full...)
	var out map[string]any
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("restore --json: %q: %v", res.stdout, err)
	}
	return connect(t, dsn), dir, out
}

func markerIDs(t *testing.T, conn *pgx.Conn, prefix string) []int {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT id FROM markers WHERE note LIKE $1 ORDER BY id", prefix+"-%")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func wantMarkers(t *testing.T, got []int, all []marker, upTo int) {
	t.Helper()
	var want []int
	for _, m := range all[:upTo] {
		want = append(want, m.id)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored markers %v, want exactly %v", got, want)
	}
}

// TestPITR: with a pgbench load running, a base backup is taken and markers
// are committed after it; restores to a time, an LSN and a restore point
// between markers bring back exactly the markers committed by then. Then a
// restored cluster is promoted, archives on its new timeline, and a restore
// to a point on that timeline follows the timeline history.
func TestPITR(t *testing.T) {
	r := newPhysRig(t)
	primary := connect(t, r.pg.DSN("postgres"))
	if _, err := primary.Exec(context.Background(), "CREATE TABLE markers (id serial PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	pgbench := filepath.Join(r.pg.BinDir, "pgbench")
	benchEnv := append(os.Environ(), r.pg.Env("postgres")...)
	init := exec.Command(pgbench, "-i", "-q", "-s", "2", "postgres")
	init.Env = benchEnv
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	load := exec.Command(pgbench, "-n", "-c", "2", "-T", "600", "postgres")
	load.Env = benchEnv
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan struct{})
	go func() { load.Wait(); close(loadDone) }()
	stopLoad := func() {
		load.Process.Kill()
		<-loadDone
	}
	t.Cleanup(stopLoad)

	res := mustRun(t, append(r.env, r.pg.Env("postgres")...), "basebackup", "--json", "--label", "test=pitr")
	var b struct{ ID string }
	json.Unmarshal([]byte(res.stdout), &b)
	if b.ID == "" {
		t.Fatalf("basebackup --json: %s", res.stdout)
	}
	markers := insertMarkers(t, primary, "m", 7)
	if _, err := primary.Exec(context.Background(), "SELECT pg_create_restore_point('after-marker-7')"); err != nil {
		t.Fatal(err)
	}
	markers = append(markers, insertMarkers(t, primary, "m", 2)...)
	stopLoad()
	switchAndWaitArchived(t, primary)

	t.Run("target-time", func(t *testing.T) {
		// Between marker 4's commit and marker 5's start.
		target := markers[3].after.Add(markers[4].before.Sub(markers[3].after) / 2)
		conn, _, out := r.restoreAndStart(t, "pitr-time", "--target-time", pgTime(target))
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 4)
		t.Logf("reached: %v", out["reached"])
	})
	t.Run("target-lsn", func(t *testing.T) {
		conn, _, _ := r.restoreAndStart(t, "pitr-lsn", "--target-lsn", markers[5].lsnAfterCommit)
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 6)
	})
	t.Run("target-name", func(t *testing.T) {
		conn, _, _ := r.restoreAndStart(t, "pitr-name", "--target-name", "after-marker-7")
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 7)
	})
	t.Run("end-of-archive", func(t *testing.T) {
		conn, _, _ := r.restoreAndStart(t, "pitr-end")
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 9)
	})
	t.Run("new-timeline", func(t *testing.T) {
		target := markers[1].after.Add(markers[2].before.Sub(markers[1].after) / 2)
		// Promoted at marker 2, archiving into the same repository.
		conn, _, out := r.restoreAndStart(t, "pitr-tl2", "--target-time", pgTime(target),
			"--start-option", "archive_mode=on", "--start-option", "archive_command="+r.archiveCommand())
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 2)
		if reached := out["reached"].(map[string]any); reached["timeline"] != float64(2) || reached["promoted"] != true {
			t.Fatalf("reached = %v, want promoted on timeline 2", reached)
		}
		tl2 := insertMarkers(t, conn, "tl2", 3)
		switchAndWaitArchived(t, conn)
		target2 := tl2[0].after.Add(tl2[1].before.Sub(tl2[0].after) / 2)
		conn2, _, _ := r.restoreAndStart(t, "pitr-tl2-restored", "--target-time", pgTime(target2))
		wantMarkers(t, markerIDs(t, conn2, "m"), markers, 2)
		wantMarkers(t, markerIDs(t, conn2, "tl2"), tl2, 1)
		if tli := scalar[string](t, conn2, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tli != "00000003" {
			t.Fatalf("a restore through timeline 2 promoted to timeline %s, want 00000003", tli)
		}
	})
}
