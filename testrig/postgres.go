package testrig

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/engine/pgtools"
)

// Postgres is a running throw-away cluster on 127.0.0.1.
type Postgres struct {
	Port     int
	User     string
	Password string
	Dir      string // holds data/, the socket and the log
	BinDir   string
	cred     *syscall.Credential
	proc     *process
	args     []string
	logFile  string
}

// start runs the server with the recorded arguments and waits until it
// accepts connections.
func (pg *Postgres) start() (*process, error) {
	p, err := startProcess(pg.command("postgres", pg.args...), pg.logFile)
	if err != nil {
		return nil, err
	}
	err = waitFor(p, 60*time.Second, pg.logFile, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		p.stop(syscall.SIGKILL, time.Second)
		return nil, err
	}
	return p, nil
}

// Restart stops the server (fast shutdown) and starts it again on the
// same port, as a maintenance restart would.
func (pg *Postgres) Restart(t testing.TB) {
	t.Helper()
	pg.proc.stop(syscall.SIGINT, 30*time.Second)
	// The port must stay (clients and receivers reconnect to it); another
	// process may hold it for a moment: try again, bounded.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var p *process
		if p, err = pg.start(); err == nil {
			pg.proc = p
			return
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	t.Fatalf("restart postgres on port %d: %v", pg.Port, err)
}

// Crash kills the postmaster with SIGKILL, as a machine failure would.
// Its backends notice and exit on their own.
func (pg *Postgres) Crash(t testing.TB) {
	t.Helper()
	pg.proc.cmd.Process.Signal(syscall.SIGKILL)
	<-pg.proc.done
}

// BinDir returns the PostgreSQL server programs' folder (pg_config --bindir).
func BinDir() (string, bool) {
	if d := os.Getenv("DRCTL_PG_BINDIR"); d != "" {
		return d, true
	}
	for _, dir := range pgtools.ServerBinDirs() {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, true
		}
	}
	return "", false
}

// serverCredential is who runs initdb and postgres: PostgreSQL refuses
// root, so a root test process runs them as the postgres OS user.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// StartPostgres initdb's a cluster in a temp dir and starts it. Extra
// settings are passed as -c name=value.
func StartPostgres(t testing.TB, settings ...string) *Postgres {
	t.Helper()
	bin, ok := BinDir()
	if !ok {
		Missing(t, "PostgreSQL server programs not found (pg_config --bindir)")
	}
	cred, err := serverCredential()
	if err != nil {
		Missing(t, "%v", err)
	}
	dir, err := os.MkdirTemp("", "drctl-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg := &Postgres{User: "postgres", Password: "drctl-test-Pa55word", Dir: dir, BinDir: bin, cred: cred}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(pg.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		os.Chown(pwfile, int(cred.Uid), int(cred.Gid))
	}
	initdb := pg.command("initdb", "-D", pg.DataDir(), "-U", pg.User, "--pwfile="+pwfile,
		"--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	os.Remove(pwfile)

	var p *process
	logFile := filepath.Join(dir, "postgres.log")
	for attempt := 0; attempt < 3; attempt++ {
		pg.Port = FreePort(t)
		args := []string{"-D", pg.DataDir(), "-c", "port=" + strconv.Itoa(pg.Port),
			"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + dir,
			"-c", "fsync=off", "-c", "max_connections=40"}
		for _, s := range settings {
			args = append(args, "-c", s)
		}
		pg.args, pg.logFile = args, logFile
		// A port taken between FreePort and the bind: start has stopped
		// the server already; try another port.
		if p, err = pg.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	// SIGINT is PostgreSQL's fast shutdown.
	pg.proc = p
	t.Cleanup(func() { pg.proc.stop(syscall.SIGINT, 30*time.Second) })
	return pg
}

func (pg *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(pg.BinDir, name), args...)
	if pg.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	cmd.Dir = pg.Dir
	return cmd
}

// ServerUser returns the OS user the server runs as, when the tests run as
// root (ok false otherwise: the server runs as the test's own user).
func (pg *Postgres) ServerUser() (uid, gid int, ok bool) {
	if pg.cred == nil {
		return 0, 0, false
	}
	return int(pg.cred.Uid), int(pg.cred.Gid), true
}

// GiveToServer chowns paths to the server's OS user (when running as root),
// so that archive_command and restore_command can use them.
func (pg *Postgres) GiveToServer(t testing.TB, paths ...string) {
	t.Helper()
	if pg.cred == nil {
		return
	}
	for _, p := range paths {
		if err := os.Chown(p, int(pg.cred.Uid), int(pg.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// Command runs one of the server programs as the server's OS user.
func (pg *Postgres) Command(name string, args ...string) *exec.Cmd { return pg.command(name, args...) }

// DataDir is the cluster's data directory.
func (pg *Postgres) DataDir() string { return filepath.Join(pg.Dir, "data") }

// DSN is a key=value connection string for db, password included.
func (pg *Postgres) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		pg.Port, pg.User, pg.Password, db)
}

// URL is the same connection as a postgres:// URL.
func (pg *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", pg.User, pg.Password, pg.Port, db)
}

// Env is the libpq environment for this cluster, password included.
func (pg *Postgres) Env(db string) []string {
	return []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(pg.Port), "PGUSER=" + pg.User,
		"PGPASSWORD=" + pg.Password, "PGDATABASE=" + db, "PGSSLMODE=disable"}
}

// Exec runs SQL statements in db.
func (pg *Postgres) Exec(t testing.TB, db string, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN(db))
	if err != nil {
		t.Fatalf("connect %s: %v", db, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec in %s: %v\n%s", db, err, sql)
	}
}

// QueryInt runs a query returning one integer.
func (pg *Postgres) QueryInt(t testing.TB, db, sql string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN(db))
	if err != nil {
		t.Fatalf("connect %s: %v", db, err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("query in %s: %v", db, err)
	}
	return n
}

// DatabaseExists reports whether db exists.
func (pg *Postgres) DatabaseExists(t testing.TB, db string) bool {
	t.Helper()
	return pg.QueryInt(t, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_database WHERE datname = '%s'", db)) == 1
}

// DumpPlain returns a plain-SQL pg_dump of db (with large objects), the
// reference that restored databases are compared by; extra are more
// pg_dump options (--no-owner...).
func (pg *Postgres) DumpPlain(t testing.TB, db string, extra ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(pg.BinDir, "pg_dump"), append([]string{"--format=plain", "--dbname=" + db}, extra...)...)
	cmd.Env = append(os.Environ(), pg.Env(db)...)
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("pg_dump %s: %v %s", db, err, msg)
	}
	// pg_dump 15.14+ brackets the script with \restrict KEY, a fresh
	// random key each run: not part of the data.
	lines := strings.Split(string(out), "\n")
	kept := lines[:0]
	for _, l := range lines {
		if !strings.HasPrefix(l, "\\restrict ") && !strings.HasPrefix(l, "\\unrestrict ") {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}
