package physical

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osuser "os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pgtools"
)

// StartOptions configure starting a restored data directory.
type StartOptions struct {
	Dir string
	// Settings are passed to the server as -c name=value (port, sockets...).
	Settings []string
	// Login is the role (user, password, dbname) to follow recovery with;
	// its host and port are ignored: Start connects only to the server it
	// started, over a private socket directory. Nil: the data directory
	// owner's user name (or this user's), database postgres.
	Login  *pgdsn.DSN
	Owner  *Owner
	Target Target
	// Timeout bounds the whole recovery (default 1 hour).
	Timeout time.Duration
	LogFile string
	// PgCtl is the pg_ctl program (empty: found on PATH or by pg_config).
	PgCtl string
	// Env is the environment of pg_ctl and so of the server and its
	// restore_command (nil: this process's). It should not carry drctl's or
	// AWS settings: restore_command reads the recovery configuration.
	Env []string
}

// Reached is where recovery stopped.
type Reached struct {
	LSN             string  `json:"lsn"`
	LastCommitTime  string  `json:"last_commit_time,omitempty"`
	Timeline        int64   `json:"timeline"`
	Promoted        bool    `json:"promoted"`
	RecoverySeconds float64 `json:"recovery_seconds"`
	// SocketDir is the private socket directory the server listens on
	// (besides its TCP settings); removed when the server was shut down.
	SocketDir string `json:"socket_dir,omitempty"`
	Port      int    `json:"port"`
}

// Start starts PostgreSQL on the restored directory and waits until
// recovery has reached its target (which Physical must have written with
// the "pause" action, so the reached point can be read), then carries out
// the requested action.
func Start(ctx context.Context, opt StartOptions) (*Reached, error) {
	if opt.Timeout == 0 {
		opt.Timeout = time.Hour
	}
	if opt.LogFile == "" {
		opt.LogFile = opt.Dir + ".log"
	}
	pgCtl, err := pgtools.Resolve(opt.PgCtl, "pg_ctl")
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sockDir, err := privateSocketDir(opt.Dir, opt.Owner)
	if err != nil {
		return nil, err
	}
	args := []string{"-D", opt.Dir, "-l", opt.LogFile, "-w", "-t", fmt.Sprint(int(opt.Timeout.Seconds())), "start"}
	var o []string
	for _, s := range withSocketDir(opt.Settings, sockDir) {
		o = append(o, "-c "+shellQuote(s))
	}
	args = append(args, "-o", strings.Join(o, " "))
	if err := prepareLog(opt.LogFile, opt.Owner); err != nil {
		removeSocketDir(sockDir, opt.Dir)
		return nil, err
	}
	if err := runAs(ctx, opt.Owner, opt.Env, pgCtl, args...); err != nil {
		removeSocketDir(sockDir, opt.Dir)
		return nil, fmt.Errorf("start PostgreSQL: %w; log: %s", err, tailFile(opt.LogFile))
	}
	port, err := postmasterPort(opt.Dir)
	if err != nil {
		return nil, err
	}
	login, err := loginDSN(opt.Login, opt.Owner, sockDir, port)
	if err != nil {
		return nil, err
	}
	// The restored catalog is the backup's: its role and database settings
	// must not load a library or shadow a function in drctl's session.
	plain := login.WithOptions("-c search_path=pg_catalog -c local_preload_libraries=")
	conn := login.WithOptions("-c search_path=pg_catalog -c local_preload_libraries= -c session_preload_libraries=")
	ctx, cancel := context.WithTimeout(ctx, opt.Timeout)
	defer cancel()
	reached := &Reached{SocketDir: sockDir, Port: port}
	for {
		done, err := pollRecovery(ctx, conn, opt, reached)
		if err == nil && done {
			break
		}
		if errors.Is(err, errNotSuperuser) && conn != plain {
			conn = plain // a role that may not set session_preload_libraries
			continue
		}
		if errors.Is(err, errLogin) {
			// Retrying a refused login only hides it for an hour.
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("recovery did not reach its target within %s: %v; log: %s", opt.Timeout, err, tailFile(opt.LogFile))
		}
		if _, serr := os.Stat(filepath.Join(opt.Dir, "postmaster.pid")); serr != nil {
			return nil, fmt.Errorf("PostgreSQL stopped during recovery: %s", tailFile(opt.LogFile))
		}
		time.Sleep(200 * time.Millisecond)
	}
	reached.RecoverySeconds = time.Since(start).Seconds()
	if !opt.Target.Empty() && opt.Target.Action == "shutdown" {
		if err := runAs(ctx, opt.Owner, opt.Env, pgCtl, "-D", opt.Dir, "-m", "fast", "-w", "stop"); err != nil {
			return nil, fmt.Errorf("stop PostgreSQL: %w", err)
		}
		removeSocketDir(sockDir, opt.Dir)
		reached.SocketDir = ""
	}
	return reached, nil
}

// privateSocketDir is a directory only the server's user (and root) can
// enter, for a socket no other server can be behind: the data directory
// itself (mode 0700) when the socket's path fits the kernel's limit, else a
// new temporary directory.
func privateSocketDir(dataDir string, owner *Owner) (string, error) {
	if len(dataDir)+len("/.s.PGSQL.65535") < 100 {
		return dataDir, nil
	}
	dir, err := os.MkdirTemp("", "drctl-sock-")
	if err != nil {
		return "", err
	}
	if owner != nil {
		if err := os.Chown(dir, owner.UID, owner.GID); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

func removeSocketDir(sockDir, dataDir string) {
	if sockDir != dataDir {
		os.RemoveAll(sockDir)
	}
}

// withSocketDir adds dir to the server's unix_socket_directories, keeping
// those the caller asked for.
func withSocketDir(settings []string, dir string) []string {
	out := make([]string, 0, len(settings)+1)
	if strings.ContainsAny(dir, ", \t") {
		dir = `"` + dir + `"`
	}
	dirs := dir
	for _, s := range settings {
		if k, v, _ := strings.Cut(s, "="); strings.TrimSpace(k) == "unix_socket_directories" {
			if v = strings.TrimSpace(v); v != "" {
				dirs = v + "," + dir
			}
			continue
		}
		out = append(out, s)
	}
	return append(out, "unix_socket_directories="+dirs)
}

// postmasterPort reads the port the started server listens on from
// postmaster.pid (its fourth line).
func postmasterPort(dir string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("the started server's postmaster.pid: %w", err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 4 {
		return 0, fmt.Errorf("postmaster.pid of %s has no port line", dir)
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil || port <= 0 || port > 65535 {
		return 0, fmt.Errorf("postmaster.pid of %s: bad port %q", dir, lines[3])
	}
	return port, nil
}

// loginDSN connects to the started server through its private socket with
// the login role's user, password and database.
func loginDSN(login *pgdsn.DSN, owner *Owner, sockDir string, port int) (*pgdsn.DSN, error) {
	user := ""
	if owner != nil {
		if u, err := osuser.LookupId(strconv.Itoa(owner.UID)); err == nil {
			user = u.Username
		}
	}
	return pgdsn.ForServer(login, sockDir, port, user, "postgres")
}

// errNotSuperuser: the login role may not set session_preload_libraries.
var errNotSuperuser = errors.New("the login role may not set session_preload_libraries")

// errLogin: the started server refused drctl's login.
var errLogin = errors.New("the restored server refused the login that follows recovery")

// pollRecovery reports whether recovery is over (promoted, or paused at
// the target, then promoted when asked).
func pollRecovery(ctx context.Context, dsn *pgdsn.DSN, opt StartOptions, r *Reached) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn.ConnString())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return false, errNotSuperuser
	}
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28") {
		return false, fmt.Errorf("%w: %s; give the role (and password) with --dsn 'user=NAME password=...', and allow it local (socket) connections in the backup's pg_hba.conf", errLogin, dsn.RedactError(err))
	}
	if err != nil {
		return false, fmt.Errorf("connect: %s", dsn.RedactError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	if err := conn.QueryRow(cctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return false, err
	}
	if !inRecovery {
		r.Promoted = true
		return true, conn.QueryRow(cctx, currentPosition).Scan(&r.LSN, &r.Timeline)
	}
	if opt.Target.Empty() {
		return false, nil // replaying to the end of the archive; promotes by itself
	}
	var state string
	if err := conn.QueryRow(cctx, "SELECT pg_catalog.pg_get_wal_replay_pause_state()").Scan(&state); err != nil {
		return false, err
	}
	if state != "paused" {
		return false, nil
	}
	var ts *time.Time
	if err := conn.QueryRow(cctx, `SELECT pg_catalog.pg_last_wal_replay_lsn()::text, pg_catalog.pg_last_xact_replay_timestamp()`).Scan(&r.LSN, &ts); err != nil {
		return false, err
	}
	if ts != nil {
		r.LastCommitTime = ts.UTC().Format(time.RFC3339Nano)
	}
	switch opt.Target.Action {
	case "", "promote":
		if _, err := conn.Exec(cctx, "SELECT pg_catalog.pg_promote(true, 60)"); err != nil {
			return false, fmt.Errorf("promote: %w", err)
		}
		r.Promoted = true
		var lsn string
		conn.QueryRow(cctx, currentPosition).Scan(&lsn, &r.Timeline)
	}
	return true, nil
}

// currentPosition reads a primary's WAL position and timeline (the control
// file's timeline lags behind a promotion until the next checkpoint).
const currentPosition = `SELECT pg_catalog.pg_current_wal_lsn()::text, ('x' OPERATOR(pg_catalog.||) pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::bigint`

func runAs(ctx context.Context, owner *Owner, env []string, prog string, args ...string) error {
	cmd := pgtools.NewCommand(ctx, prog, args, env)
	if owner != nil && os.Geteuid() == 0 {
		cmd.Cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(owner.UID), Gid: uint32(owner.GID)}}
	}
	cmd.Cmd.Dir = "/"
	if err := cmd.Cmd.Start(); err != nil {
		return err
	}
	return cmd.Wait()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// prepareLog creates the server's log file for its owner. The log lives
// beside the data directory, where the server's user may write: a symlink
// planted there must not make root create or chown anything else.
func prepareLog(path string, owner *Owner) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("server log %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || ok && st.Nlink != 1 {
		return fmt.Errorf("server log %s is not a plain file (a link?): remove it, or give --start-option's log elsewhere", path)
	}
	if owner != nil {
		return f.Chown(owner.UID, owner.GID)
	}
	return nil
}

func tailFile(path string) string {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "(no log)"
	}
	if fi, _ := f.Stat(); fi.Size() > 1<<20 {
		f.Seek(fi.Size()-(1<<20), 0)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return "(no log)"
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 1500 {
		s = s[len(s)-1500:]
	}
	return s
}
