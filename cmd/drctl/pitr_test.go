package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
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
	return newPhysRigArchiving(t, true, extra...)
}

// newPhysRigArchiving starts the primary with archive_command set, or with
// archiving off (WAL then reaches the repository by wal-receive).
func newPhysRigArchiving(t *testing.T, archive bool, extra ...string) *physRig {
	t.Helper()
	work := workDir(t, "pitr")
	r := &physRig{work: work, repo: filepath.Join(work, "repo")}
	r.keys = testrig.NewKeys(t, work)
	os.Chmod(r.keys.RecipientsFile, 0o644)
	for _, d := range []string{r.repo, filepath.Join(r.repo, ".drctl-tmp"), filepath.Join(r.repo, "wal")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	r.archCfg = filepath.Join(work, "archive.yaml")
	if err := os.WriteFile(r.archCfg, []byte(fmt.Sprintf("repo: file://%s\nrecipients_file: %s\n", r.repo, r.keys.RecipientsFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	settings := []string{"wal_level=replica", "max_wal_senders=5"}
	if archive {
		settings = append(settings, "archive_mode=on", "archive_command="+r.archiveCommand())
	}
	settings = append(settings, extra...)
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
	var failed int64
	var lastFailed *string
	for time.Now().Before(deadline) {
		var last *string
		if err := conn.QueryRow(context.Background(), "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver").Scan(&last, &failed, &lastFailed); err != nil {
			t.Fatalf("pg_stat_archiver: %v", err)
		}
		if last != nil && *last >= seg {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	failedWAL := "none"
	if lastFailed != nil {
		failedWAL = *lastFailed
	}
	t.Fatalf("segment %s was not archived within 60s: archive_command failed %d times, last on %s (the server log says why)", seg, failed, failedWAL)
}

type marker struct {
	id             int
	xid            string    // the inserting transaction
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
		if err := conn.QueryRow(context.Background(), "INSERT INTO markers (note) VALUES ($1) RETURNING id, pg_current_xact_id()::text", fmt.Sprintf("%s-%d", prefix, i)).Scan(&m.id, &m.xid); err != nil {
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
	t.Cleanup(func() {
		r.pg.Command("pg_ctl", "-D", dir, "-m", "immediate", "-w", "stop").Run()
	})
	// --dsn names the primary's host and port, as DRCTL_DSN does: drctl
	// must use only its login role and follow the server it started (the
	// primary is not in recovery and would look "promoted" at once).
	login := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", r.pg.Port, r.pg.User, r.pg.Password)
	for attempt := 1; ; attempt++ {
		port := testrig.FreePort(t)
		full := append([]string{"restore", "latest", "--to", dir, "--start", "--json", "--dsn", login,
			"--start-option", fmt.Sprintf("port=%d", port), "--start-option", "listen_addresses=127.0.0.1",
			"--start-option", "unix_socket_directories="}, args...)
		res := drctl(t, r.env, full...)
		if res.code != 0 && attempt < 3 && strings.Contains(res.stderr, "Address already in use") {
			// Another process took the port between FreePort and the
			// server's bind: restore again on another one.
			t.Logf("port %d taken before the restored server bound it; retrying", port)
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if res.code != 0 {
			t.Fatalf("drctl %s: exit %d\n%s", strings.Join(full, " "), res.code, res.all())
		}
		var out map[string]any
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
			t.Fatalf("restore --json: %q: %v", res.stdout, err)
		}
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", port, r.pg.User, r.pg.Password)
		return connect(t, dsn), dir, out
	}
}

// fork copies the repository so that a test can archive a new timeline
// into its copy without changing what the other subtests restore.
func (r *physRig) fork(t *testing.T, name string) *physRig {
	t.Helper()
	f := *r
	f.repo = filepath.Join(r.work, name+"-repo")
	if err := os.CopyFS(f.repo, os.DirFS(r.repo)); err != nil {
		t.Fatal(err)
	}
	err := filepath.WalkDir(f.repo, func(path string, _ os.DirEntry, err error) error {
		if err == nil {
			r.pg.GiveToServer(t, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.archCfg = filepath.Join(r.work, name+"-archive.yaml")
	if err := os.WriteFile(f.archCfg, []byte(fmt.Sprintf("repo: file://%s\nrecipients_file: %s\n", f.repo, r.keys.RecipientsFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.env = []string{"DRCTL_REPO=file://" + f.repo}
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "DRCTL_REPO=") {
			f.env = append(f.env, kv)
		}
	}
	return &f
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
	loadLog := &lockedBuffer{}
	load.Stdout, load.Stderr = loadLog, loadLog
	load.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	var loadStopped bool
	stopLoad := func() {
		if loadStopped {
			return
		}
		loadStopped = true
		// The load must have run the whole time: a pgbench that gave up
		// early would leave the backup and markers without concurrent writes.
		select {
		case err := <-loadDone:
			t.Fatalf("pgbench stopped before the test ended it: %v\n%s", err, loadLog.String())
		default:
		}
		load.Process.Kill()
		<-loadDone
	}
	t.Cleanup(stopLoad)

	res := mustRun(t, append(r.env, r.pg.Env("postgres")...), "basebackup", "--json", "--label", "test=pitr")
	var b struct{ ID string }
	decodeJSON(t, res.stdout, &b)
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
	// show names the restore window of the base backup.
	var shown struct {
		ID     string
		Window struct {
			Restorable bool   `json:"restorable"`
			FromLSN    string `json:"from_lsn"`
		} `json:"window"`
	}
	decodeJSON(t, mustRun(t, r.env, "show", "latest", "--kind", "physical", "--json").stdout, &shown)
	if shown.ID != b.ID || !shown.Window.Restorable || shown.Window.FromLSN == "" {
		t.Fatalf("show --json of the base backup: %+v", shown)
	}
	if out := mustRun(t, r.env, "show", b.ID).stdout; !strings.Contains(out, "restores to") || !strings.Contains(out, "any point from") {
		t.Fatalf("show of the base backup:\n%s", out)
	}

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
	t.Run("target-xid", func(t *testing.T) {
		conn, _, _ := r.restoreAndStart(t, "pitr-xid", "--target-xid", markers[2].xid)
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 3) // the target transaction included
	})
	t.Run("target-action-pause", func(t *testing.T) {
		conn, _, out := r.restoreAndStart(t, "pitr-pause", "--target-lsn", markers[4].lsnAfterCommit, "--target-action", "pause")
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 5)
		if !scalar[bool](t, conn, "SELECT pg_is_in_recovery()") || out["reached"].(map[string]any)["promoted"] != false {
			t.Fatalf("--target-action pause: the server left recovery (%v)", out["reached"])
		}
	})
	t.Run("target-action-shutdown", func(t *testing.T) {
		dir := filepath.Join(r.work, "pitr-shutdown")
		t.Cleanup(func() { r.pg.Command("pg_ctl", "-D", dir, "-m", "immediate", "-w", "stop").Run() })
		res := mustRun(t, r.env, "restore", "latest", "--to", dir, "--start", "--json", "--target-lsn", markers[4].lsnAfterCommit,
			"--target-action", "shutdown", "--dsn", fmt.Sprintf("user=%s password=%s", r.pg.User, r.pg.Password),
			"--start-option", fmt.Sprintf("port=%d", testrig.FreePort(t)), "--start-option", "listen_addresses=")
		var out struct {
			Reached struct {
				LSN      string `json:"lsn"`
				Promoted bool   `json:"promoted"`
			} `json:"reached"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || out.Reached.LSN == "" || out.Reached.Promoted {
			t.Fatalf("--target-action shutdown: %v %s", err, res.stdout)
		}
		if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err == nil {
			t.Fatal("--target-action shutdown left the server running")
		}
	})
	t.Run("end-of-archive", func(t *testing.T) {
		conn, _, _ := r.restoreAndStart(t, "pitr-end")
		wantMarkers(t, markerIDs(t, conn, "m"), markers, 9)
	})
	t.Run("new-timeline", func(t *testing.T) {
		r := r.fork(t, "tl2")
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
		// The promotion archived timeline 2's history file.
		if history, _ := filepath.Glob(filepath.Join(r.repo, "wal", "00000002.history.*")); len(history) != 1 {
			t.Fatalf("after the promotion the archive holds history files %v", history)
		}
		target2 := tl2[0].after.Add(tl2[1].before.Sub(tl2[0].after) / 2)
		conn2, _, _ := r.restoreAndStart(t, "pitr-tl2-restored", "--target-time", pgTime(target2))
		wantMarkers(t, markerIDs(t, conn2, "m"), markers, 2)
		wantMarkers(t, markerIDs(t, conn2, "tl2"), tl2, 1)
		if tli := scalar[string](t, conn2, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tli != "00000003" {
			t.Fatalf("a restore through timeline 2 promoted to timeline %s, want 00000003", tli)
		}
		// --target-timeline current stays on the backup's timeline 1: every
		// marker of it, none of timeline 2's.
		conn3, _, _ := r.restoreAndStart(t, "pitr-tl-current", "--target-timeline", "current")
		wantMarkers(t, markerIDs(t, conn3, "m"), markers, 9)
		if ids := markerIDs(t, conn3, "tl2"); len(ids) != 0 {
			t.Fatalf("--target-timeline current restored timeline 2's markers %v", ids)
		}
	})
}

// TestWALVerifyAndGaps: verify checks every file of a base backup against
// backup_manifest and the WAL archive for continuity; deleting one archived
// segment makes verify name it and the window it breaks.
func TestWALVerifyAndGaps(t *testing.T) {
	r := newPhysRig(t)
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLESPACE extra LOCATION '"+r.tablespaceDir(t)+"'")
	mustExec(t, primary, "CREATE TABLE t TABLESPACE extra AS SELECT g FROM generate_series(1, 100000) g")
	res := mustRun(t, append(r.env, r.pg.Env("postgres")...), "basebackup", "--json")
	var b struct {
		ID       string
		Physical struct {
			StartSegment string `json:"start_wal_segment"`
			StopSegment  string `json:"stop_wal_segment"`
		}
	}
	decodeJSON(t, res.stdout, &b)
	for i := 0; i < 3; i++ {
		mustExec(t, primary, "INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
		switchAndWaitArchived(t, primary)
	}

	r1 := mustRun(t, r.env, "verify", b.ID, "--json")
	var rep struct {
		OK      bool
		Objects []struct {
			Key   string
			Files int `json:"files_checked"`
		}
		WAL struct {
			OK          bool
			LastSegment string `json:"last_segment"`
			WindowTo    string `json:"window_to_lsn"`
		}
	}
	if err := json.Unmarshal([]byte(r1.stdout), &rep); err != nil || !rep.OK || !rep.WAL.OK {
		t.Fatalf("verify of a healthy backup: %s", r1.stdout)
	}
	tars := 0
	for _, o := range rep.Objects {
		if strings.HasSuffix(o.Key, ".tar.zst.age") {
			tars++
			if o.Files == 0 {
				t.Fatalf("tar %s: no file checked against backup_manifest", o.Key)
			}
		}
	}
	if tars != 2 {
		t.Fatalf("want base.tar and the tablespace's tar, got %d tars: %s", tars, r1.stdout)
	}
	list := mustRun(t, r.env, "list", "--json")
	if !strings.Contains(list.stdout, `"window"`) || !strings.Contains(list.stdout, rep.WAL.WindowTo) {
		t.Fatalf("list --json lacks the restore window %s: %s", rep.WAL.WindowTo, list.stdout)
	}

	// The identical segment pushed again is accepted; a different file
	// under an archived name is refused.
	archived, _ := filepath.Glob(filepath.Join(r.repo, "wal", b.Physical.StopSegment+"."+strings.Repeat("?", 32)+".zst.age"))
	if len(archived) != 1 {
		t.Fatalf("archived copies of %s: %v", b.Physical.StopSegment, archived)
	}
	fake := filepath.Join(t.TempDir(), rep.WAL.LastSegment)
	os.WriteFile(fake, []byte("not the archived segment"), 0o600)
	mustFail(t, r.env, "two primaries", "wal-push", fake)

	// The tablespace restores to a new place; the original is in use.
	newTS := filepath.Join(r.work, "tablespace-restored")
	conn, _, _ := r.restoreAndStart(t, "with-tablespace", "--tablespace-map", r.tablespaceDir(t)+"="+newTS)
	if n := scalar[int64](t, conn, "SELECT count(*) FROM t"); n != 103000 { // to the end of the archive
		t.Fatalf("table in the mapped tablespace: %d rows", n)
	}
	if loc := scalar[string](t, conn, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"); loc != newTS {
		t.Fatalf("tablespace restored at %q, want %q", loc, newTS)
	}
	// A non-empty target directory is refused.
	mustFail(t, r.env, "not empty", "restore", "latest", "--to", r.pg.DataDir(), "--tablespace-map", r.tablespaceDir(t)+"="+filepath.Join(r.work, "ts-unused"))
	// The tablespace's recorded path is not used without the user's word.
	mustFail(t, r.env, "--tablespace-map", "restore", "latest", "--to", filepath.Join(r.work, "no-ts-map"))

	// A gap after the backup: restorable, but only up to the gap.
	segs, _ := filepath.Glob(filepath.Join(r.repo, "wal", "00000001"+strings.Repeat("?", 16)+"."+strings.Repeat("?", 32)+".zst.age"))
	sortStrings(segs)
	var after string
	for _, p := range segs {
		name := filepath.Base(p)[:24]
		if name > b.Physical.StopSegment && name < rep.WAL.LastSegment {
			after = p
			break
		}
	}
	if after == "" {
		t.Fatalf("no archived segment between %s and %s: %v", b.Physical.StopSegment, rep.WAL.LastSegment, segs)
	}
	if err := os.Remove(after); err != nil {
		t.Fatal(err)
	}
	gapName := filepath.Base(after)[:24]
	r2 := drctl(t, r.env, "verify", b.ID)
	if r2.code != 3 || !strings.Contains(r2.stderr, gapName) || !strings.Contains(r2.stderr, "stops at") {
		t.Fatalf("verify with %s deleted: exit %d\n%s", gapName, r2.code, r2.all())
	}
	// A gap inside the backup's own WAL: not restorable at all.
	if err := os.Remove(archived[0]); err != nil {
		t.Fatal(err)
	}
	r3 := drctl(t, r.env, "verify", b.ID)
	if r3.code != 3 || !strings.Contains(r3.stderr, b.Physical.StopSegment) || !strings.Contains(r3.stderr, "cannot be restored") {
		t.Fatalf("verify with the backup's own segment deleted: exit %d\n%s", r3.code, r3.all())
	}
	// One flipped byte in the base backup's tar is named before any WAL gap.
	tarKey := "backups/" + b.ID + "/base.tar.zst.age"
	tarPath := filepath.Join(r.repo, filepath.FromSlash(tarKey))
	data, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/3] ^= 0x10
	if err := os.WriteFile(tarPath, data, 0o640); err != nil {
		t.Fatal(err)
	}
	if r4 := drctl(t, r.env, "verify", b.ID); r4.code != 3 || !strings.Contains(r4.stderr, tarKey) {
		t.Fatalf("verify of a base backup with a flipped byte: exit %d\n%s", r4.code, r4.all())
	}
	// A restore of it fails naming the object, and leaves its directories
	// empty: nothing half-restored can be started.
	target := filepath.Join(r.work, "from-damaged")
	space := filepath.Join(r.work, "from-damaged-space")
	r5 := mustFail(t, r.env, tarKey, "restore", b.ID, "--to", target, "--tablespace-map", r.tablespaceDir(t)+"="+space)
	for _, dir := range []string{target, space} {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			t.Fatalf("a failed restore left %d entries in %s\n%s", len(entries), dir, r5.all())
		}
	}
}

func (r *physRig) tablespaceDir(t *testing.T) string {
	dir := filepath.Join(r.work, "tablespace")
	os.MkdirAll(dir, 0o700)
	r.pg.GiveToServer(t, dir)
	return dir
}

func sortStrings(s []string) { sort.Strings(s) }

// TestWALReceive streams WAL with archiving off across a server restart
// and a segment boundary, kills the primary with SIGKILL once it has sent
// its last commit, and restores from the repository: every acknowledged
// commit is back.
func TestWALReceive(t *testing.T) {
	r := newPhysRigArchiving(t, false)
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE markers (id serial PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())")

	recv := exec.Command(drctlBin, "wal-receive", "--slot", "drctl_test", "--flush-interval", "500ms", "--log-level", "debug")
	recv.Env = append(append(os.Environ(), r.env...), r.pg.Env("postgres")...)
	recvLog := &lockedBuffer{}
	recv.Stderr = recvLog
	recv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if uid, gid, ok := r.pg.ServerUser(); ok {
		// As a sidecar would: the server's user, so restore_command can
		// read what it stores.
		recv.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	recvDone := make(chan error, 1)
	go func() { recvDone <- recv.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			recv.Process.Kill()
			<-recvDone
		}
	})

	mustRun(t, append(r.env, r.pg.Env("postgres")...), "basebackup", "--wal-wait", "60s")
	committed := 0
	for i := 0; i < 40; i++ {
		mustExec(t, primary, "INSERT INTO markers (note) VALUES ('s')")
		committed++
		time.Sleep(50 * time.Millisecond) // pacing: commits spread over time, not synchronization
	}
	// A maintenance restart: the receiver reconnects and resumes from its slot.
	r.pg.Restart(t)
	primary = connect(t, r.pg.DSN("postgres"))
	// One busy moment crosses a segment boundary while streaming.
	mustExec(t, primary, "CREATE TABLE filler AS SELECT g, md5(g::text) FROM generate_series(1, 300000) g")
	for i := 0; i < 20; i++ {
		mustExec(t, primary, "INSERT INTO markers (note) VALUES ('s')")
		committed++
		time.Sleep(50 * time.Millisecond)
	}
	// Streaming is asynchronous, as to a standby without synchronous
	// replication: what the primary has not sent when it dies is lost.
	// Once it has sent its last commit, a crash must lose nothing.
	last := scalar[string](t, primary, "SELECT pg_current_wal_flush_lsn()::text")
	deadline := time.Now().Add(30 * time.Second)
	for scalar[int64](t, primary, "SELECT count(*) FROM pg_stat_replication WHERE sent_lsn >= '"+last+"'::pg_lsn") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the primary did not send WAL up to %s to wal-receive within 30s:\n%s", last, recvLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	interruptions := strings.Count(recvLog.String(), "WAL streaming interrupted")
	r.pg.Crash(t)
	// The receiver stores what it received before it reports the lost
	// connection: wait for that report, not for a guessed interval.
	deadline = time.Now().Add(30 * time.Second)
	for strings.Count(recvLog.String(), "WAL streaming interrupted") == interruptions {
		if time.Now().After(deadline) {
			t.Fatalf("wal-receive did not notice the crash within 30s:\n%s", recvLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	recv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-recvDone:
		stopped = true
		if err != nil {
			t.Fatalf("wal-receive on SIGTERM: %v\n%s", err, recvLog.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("wal-receive did not stop on SIGTERM:\n%s", recvLog.String())
	}

	conn, _, _ := r.restoreAndStart(t, "from-stream")
	restored := int(scalar[int64](t, conn, "SELECT count(*) FROM markers"))
	maxID := int(scalar[int32](t, conn, "SELECT coalesce(max(id), 0) FROM markers"))
	if maxID != restored {
		t.Fatalf("restored markers are not a prefix: %d rows, max id %d", restored, maxID)
	}
	if restored != committed {
		t.Fatalf("%d acknowledged commits, all sent to wal-receive before the crash; %d restored\n%s", committed, restored, recvLog.String())
	}
	if scalar[int64](t, conn, "SELECT count(*) FROM filler") != 300000 {
		t.Fatal("the table created across a segment boundary was not restored")
	}
}

// TestWALFetchPrefetch: fetching one segment starts a background fetch of
// the next ones into pg_wal/.drctl-prefetch, from which later calls are
// served without the repository.
func TestWALFetchPrefetch(t *testing.T) {
	work := t.TempDir()
	keys := testrig.NewKeys(t, work)
	env := []string{"DRCTL_REPO=" + filepath.Join(work, "repo"), "DRCTL_AGE_RECIPIENTS_FILE=" + keys.RecipientsFile,
		"DRCTL_AGE_IDENTITY_FILE=" + keys.IdentityFile}
	src := filepath.Join(work, "src")
	os.MkdirAll(src, 0o700)
	var contents [][]byte
	for i := 1; i <= 5; i++ {
		name := fmt.Sprintf("0000000100000000000000%02X", i)
		data := []byte(strings.Repeat(fmt.Sprintf("segment %d ", i), 100000))
		contents = append(contents, data)
		os.WriteFile(filepath.Join(src, name), data, 0o600)
		mustRun(t, env, "wal-push", filepath.Join(src, name))
	}
	walDir := filepath.Join(work, "pg_wal")
	os.MkdirAll(walDir, 0o700)
	dest := filepath.Join(walDir, "RECOVERYXLOG")
	mustRun(t, env, "wal-fetch", "--segment-size", "16777216", "000000010000000000000001", dest)
	if got, _ := os.ReadFile(dest); string(got) != string(contents[0]) {
		t.Fatal("fetched segment 1 differs")
	}
	spool := filepath.Join(walDir, ".drctl-prefetch")
	deadline := time.Now().Add(20 * time.Second)
	for {
		entries, _ := os.ReadDir(spool)
		n := 0
		for _, e := range entries {
			if len(e.Name()) == 24 {
				n++
			}
		}
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch spooled %d of 4 segments", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// With the archive gone, the spooled segments are still served.
	os.RemoveAll(filepath.Join(work, "repo", "wal"))
	for i := 2; i <= 5; i++ {
		mustRun(t, env, "wal-fetch", "--prefetch", "0", fmt.Sprintf("0000000100000000000000%02X", i), dest)
		if got, _ := os.ReadFile(dest); string(got) != string(contents[i-1]) {
			t.Fatalf("segment %d from the spool differs", i)
		}
	}
	// Past the archive's end: exit 1, nothing on stderr.
	r := drctl(t, env, "wal-fetch", "000000010000000000000006", dest)
	if r.code != 1 || r.stderr != "" {
		t.Fatalf("fetch past the end: exit %d, stderr %q", r.code, r.stderr)
	}
	// A broken repository is an error that stops recovery, not "not found".
	r = drctl(t, []string{"DRCTL_REPO=s3://b/x", "AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b",
		"AWS_ENDPOINT_URL_S3=http://127.0.0.1:1", "DRCTL_S3_FORCE_PATH_STYLE=true", "AWS_MAX_ATTEMPTS=2", "DRCTL_AGE_IDENTITY_FILE=" + keys.IdentityFile},
		"wal-fetch", "000000010000000000000007", dest)
	if r.code != 126 {
		t.Fatalf("fetch from an unreachable repository: exit %d, want 126\n%s", r.code, r.all())
	}
}

// TestBaseBackupWithoutWAL: with archiving off and no receiver, the backup's
// WAL never reaches the repository: the base backup fails, naming the
// missing segment, and nothing is listed or left behind.
func TestBaseBackupWithoutWAL(t *testing.T) {
	r := newPhysRigArchiving(t, false)
	env := append(r.env, r.pg.Env("postgres")...)
	res := mustFail(t, env, "did not reach the archive", "basebackup", "--wal-wait", "2s")
	if !strings.Contains(res.stderr, "archive_command") {
		t.Fatalf("the error does not say how to fix it: %s", res.stderr)
	}
	if out := mustRun(t, r.env, "list", "--json"); strings.TrimSpace(out.stdout) != "[]" {
		t.Fatalf("a failed base backup is listed: %s", out.stdout)
	}
	left, _ := filepath.Glob(filepath.Join(r.repo, "backups", "*", "*"))
	if len(left) != 0 {
		t.Fatalf("a failed base backup left objects: %v", left)
	}
	mustFail(t, []string{"DRCTL_REPO=" + r.repo}, "--no-encryption", "basebackup", "--dsn", r.pg.DSN("postgres"))
	mustFail(t, r.env, "password authentication failed", "basebackup", "--dsn", strings.Replace(r.pg.DSN("postgres"), r.pg.Password, "wrong", 1))
}

// TestPITRFromS3: archive_command and restore_command take their S3
// settings from a config file's env: block (they run with the server's
// environment, not the user's); the recovery configuration drctl writes is
// the server user's alone (0600) and carries those settings, and a
// point-in-time restore from the S3 repository replays through it.
func TestPITRFromS3(t *testing.T) {
	srv := testrig.StartS3(t)
	work := workDir(t, "pitr")
	keys := testrig.NewKeys(t, work)
	os.Chmod(keys.RecipientsFile, 0o644)
	repo := srv.RepoURL("pitr")
	var envBlock strings.Builder
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&envBlock, "  %s: %q\n", k, v)
	}
	archCfg := filepath.Join(work, "archive.yaml")
	os.WriteFile(archCfg, []byte(fmt.Sprintf("repo: %s\nrecipients_file: %s\nenv:\n%s", repo, keys.RecipientsFile, envBlock.String())), 0o644)
	pg := testrig.StartPostgres(t, "wal_level=replica", "archive_mode=on",
		fmt.Sprintf("archive_command=%s --config %s wal-push %%p", drctlBin, archCfg))
	primary := connect(t, pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE markers (id serial PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())")
	env := append(srv.Env(), "DRCTL_REPO="+repo, "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
	mustRun(t, append(env, pg.Env("postgres")...), "basebackup")
	markers := insertMarkers(t, primary, "s3", 3)
	switchAndWaitArchived(t, primary)

	r := &physRig{pg: pg, work: work, keys: keys, env: env}
	conn, dir, _ := r.restoreAndStart(t, "from-s3", "--target-lsn", markers[1].lsnAfterCommit)
	wantMarkers(t, markerIDs(t, conn, "s3"), markers, 2)
	cfgPath := dir + ".drctl-recovery.yaml"
	fi, err := os.Stat(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("recovery config mode %v, want 0600", fi.Mode().Perm())
	}
	if uid, _, ok := pg.ServerUser(); ok && int(fi.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Fatalf("recovery config owned by uid %d, want the server's %d", fi.Sys().(*syscall.Stat_t).Uid, uid)
	}
	cfg, _ := os.ReadFile(cfgPath)
	for _, want := range []string{"repo: " + repo, "AWS_ENDPOINT_URL_S3", "AWS_SECRET_ACCESS_KEY", "identity: "} {
		if !strings.Contains(string(cfg), want) {
			t.Fatalf("the recovery config lacks %q", want)
		}
	}
}

// mustExec runs setup SQL, failing the test when it fails.
func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
