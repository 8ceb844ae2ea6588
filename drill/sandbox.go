package drill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drctl/drctl/engine/pgtools"
)

// Sandbox is where a drill restores: a throw-away PostgreSQL server that
// nothing else uses. Close always destroys it. A sandbox is either a
// Server, into which drctl restores, or a Provisioner, which restores the
// backup where it runs.
type Sandbox interface {
	// Kind names the sandbox in drill records ("local", "kubernetes").
	Kind() string
	// DSN reaches a database of the running server as its superuser.
	DSN(database string) string
	// DSNAs reaches it as another role.
	DSNAs(user, password, database string) string
	Close(ctx context.Context) error
}

// Server is a sandbox drctl restores into itself (the local one).
type Server interface {
	Sandbox
	// DataDir is where a base backup is restored (empty, owned by the
	// server's user).
	DataDir() string
	// InitDB makes an empty cluster (for a logical restore).
	InitDB(ctx context.Context) error
	// Start starts the server on what DataDir holds.
	Start(ctx context.Context) error
	// Env is the same as PG* variables (for programs that take them).
	Env(database string) []string
}

// Provisioner is a sandbox that restores the backup itself, where it runs
// (a Kubernetes pod's init container, a Job), with drctl restore.
type Provisioner interface {
	Sandbox
	// Provision creates the sandbox with the backup restored into it and
	// its server started: a logical backup restored into the process's
	// database, a base backup written and its server replaying the
	// archive (the drill then waits for the promotion).
	Provision(ctx context.Context, spec Spec) error
	// Err is why the provisioned server stopped being served (its pod
	// died, the forward broke), nil while it is.
	Err() error
}

// Spec is what a Provisioner restores.
type Spec struct {
	DrillID  string `json:"drill_id"`
	Process  string `json:"process"`
	Mode     string `json:"mode"` // policy.ModeLogical or policy.ModePITR
	Database string `json:"database"`
	BackupID string `json:"backup_id"`
	// Expires is when a janitor may remove the sandbox if its drill did
	// not (killed): the drill's start plus its timeout and a margin.
	Expires time.Time `json:"expires"`
}

// sandboxPrefix names local sandboxes' directories in the temp dir.
const sandboxPrefix = "drctl-drill-"

// Local is a sandbox in a private temp directory: its own cluster, a
// private socket directory (no TCP), run as the postgres OS user when
// drctl runs as root.
type Local struct {
	dir      string
	binDir   string
	cred     *syscall.Credential
	user     string // the superuser drctl logs in as
	password string
	port     int
}

// LocalOptions configure a local sandbox.
type LocalOptions struct {
	// BinDir holds initdb, pg_ctl and postgres (default: found like
	// pgtools does, in DRCTL_PG_BINDIR's stead).
	BinDir string
	// Root is where the sandbox directory goes (default os.TempDir()).
	Root string
}

// Root is where local sandboxes live by default: a directory of drctl's
// own in the temp dir (mode 0711: the server's user may pass through to
// its sandbox, but lists and plants nothing).
func Root() string { return filepath.Join(os.TempDir(), fmt.Sprintf("drctl-drills-%d", os.Geteuid())) }

// PrivateRoot makes (or checks) dir as a directory of this user's, not a
// symlink, writable by nobody else.
func PrivateRoot(dir string) error {
	if err := os.Mkdir(dir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("drill sandbox root %s is not a directory of this user's that only it can write: refusing it", dir)
	}
	return nil
}

// NewLocal prepares a local sandbox (nothing runs yet). It first removes
// the sandboxes of drills that were killed.
func NewLocal(opt LocalOptions) (*Local, error) {
	root := opt.Root
	if root == "" {
		root = Root()
	}
	if err := PrivateRoot(root); err != nil {
		return nil, err
	}
	CleanLeftovers(root)
	bin := opt.BinDir
	if bin == "" {
		p, err := pgtools.Find("pg_ctl", "")
		if err != nil {
			return nil, fmt.Errorf("drill sandbox: %w", err)
		}
		bin = filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
			for _, d := range pgtools.ServerBinDirs() {
				if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
					bin = d
					break
				}
			}
		}
	}
	for _, prog := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(bin, prog)); err != nil {
			return nil, fmt.Errorf("drill sandbox: %s not found in %s (install the PostgreSQL server, or set DRCTL_PG_BINDIR)", prog, bin)
		}
	}
	dir, err := os.MkdirTemp(root, sandboxPrefix)
	if err != nil {
		return nil, err
	}
	l := &Local{dir: dir, binDir: bin, user: "postgres", password: randomHex(16)}
	fail := func(err error) (*Local, error) { os.RemoveAll(dir); return nil, err }
	if os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644) != nil {
		return fail(errors.New("drill sandbox: cannot write in " + dir))
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fail(errors.New("drill sandbox: running as root, PostgreSQL needs a postgres OS user to run as"))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		l.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	} else if u, err := user.Current(); err == nil {
		l.user = u.Username
	}
	for _, d := range []string{l.DataDir(), l.sockDir(), l.logDir()} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fail(err)
		}
		if err := l.own(d); err != nil {
			return fail(err)
		}
	}
	// The sandbox directory itself: reachable by the server's user.
	os.Chmod(dir, 0o711)
	if l.port, err = freePort(); err != nil {
		return fail(err)
	}
	return l, nil
}

func (l *Local) own(path string) error {
	if l.cred == nil {
		return nil
	}
	return os.Chown(path, int(l.cred.Uid), int(l.cred.Gid))
}

// Kind is "local".
func (l *Local) Kind() string { return "local" }

// DataDir is the cluster's data directory.
func (l *Local) DataDir() string { return filepath.Join(l.dir, "data") }

func (l *Local) sockDir() string { return filepath.Join(l.dir, "sock") }

func (l *Local) logDir() string { return filepath.Join(l.dir, "log") }

func (l *Local) run(ctx context.Context, prog string, args ...string) error {
	cmd := pgtools.NewCommand(ctx, filepath.Join(l.binDir, prog), args, serverEnv())
	if l.cred != nil {
		cmd.Cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.cred}
	}
	cmd.Cmd.Dir = "/"
	if err := cmd.Cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", prog, err)
	}
	if err := cmd.Wait(); err != nil {
		msg := strings.Join(strings.Fields(err.Error()), " ")
		if prog == "pg_ctl" {
			msg = "the sandbox's server did not start: " + l.serverErrors()
		}
		return errors.New(msg)
	}
	return nil
}

// serverEnv is the environment the sandbox's server runs with: not
// drctl's settings (restore_command reads the recovery configuration the
// restore wrote; an inherited DRCTL_* or AWS_* would override it, with
// files the server's user cannot read) nor libpq's.
func serverEnv() []string {
	env := []string{"LC_ALL=C"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DRCTL_") && !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_ALL=") {
			env = append(env, kv)
		}
	}
	return env
}

// InitDB creates an empty cluster whose superuser logs in with a random
// password.
func (l *Local) InitDB(ctx context.Context) error {
	// In the sandbox's own directory, where the server's user can create
	// nothing (a symlink planted there would have root write the password
	// through it), given to that user by handle.
	pwfile := filepath.Join(l.dir, "pw")
	f, err := os.OpenFile(pwfile, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(pwfile)
	_, err = f.WriteString(l.password + "\n")
	if err == nil && l.cred != nil {
		err = f.Chown(int(l.cred.Uid), int(l.cred.Gid))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return l.run(ctx, "initdb", "-D", l.DataDir(), "-U", l.user, "--pwfile="+pwfile, "--auth=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync")
}

// Start starts the server on a private socket, no TCP. The data
// directory's own pg_hba.conf is replaced by one that lets the sandbox's
// socket in (a restored base backup's roles and passwords are not ours;
// only the server's OS user and root reach the socket directory).
func (l *Local) Start(ctx context.Context) error {
	rule := "local all all scram-sha-256\n"
	if l.restored() {
		// A restored cluster: its roles and passwords are the backup's;
		// the private socket is the fence.
		rule = "local all all trust\n"
	}
	hba := filepath.Join(l.dir, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte(rule), 0o600); err != nil {
		return err
	}
	if err := l.own(hba); err != nil {
		return err
	}
	settings := []string{"-c port=" + strconv.Itoa(l.port), "-c listen_addresses=''",
		"-c unix_socket_directories=" + l.sockDir(), "-c hba_file=" + hba, "-c fsync=off", "-c logging_collector=off"}
	if l.restored() {
		// Replay without hot standby: it would demand the primary's
		// max_connections and friends; the server opens once promoted.
		// Production's memory and preloaded libraries stay in production.
		// (drctl restore already reset preload libraries named by path.)
		settings = append(settings, "-c hot_standby=off", "-c shared_buffers=128MB", "-c huge_pages=off")
	} else {
		settings = append(settings, "-c max_connections=20")
	}
	opts := strings.Join(settings, " ")
	return l.run(ctx, "pg_ctl", "start", "-w", "-t", "86400", "-D", l.DataDir(), "-l", filepath.Join(l.logDir(), "server.log"), "-o", opts)
}

// restored reports whether the data directory came from a base backup
// (it holds a backup_label or recovery signal) rather than initdb.
func (l *Local) restored() bool {
	for _, f := range []string{"backup_label", "recovery.signal", "standby.signal"} {
		if _, err := os.Stat(filepath.Join(l.DataDir(), f)); err == nil {
			return true
		}
	}
	return false
}

// DSN reaches database over the private socket.
func (l *Local) DSN(database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", l.sockDir(), l.port, l.user, l.password, quoteConn(database))
}

// DSNAs reaches database over the private socket as user.
func (l *Local) DSNAs(user, password, database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", l.sockDir(), l.port, quoteConn(user), quoteConn(password), quoteConn(database))
}

// Env is the DSN as PG* variables.
func (l *Local) Env(database string) []string {
	return []string{"PGHOST=" + l.sockDir(), "PGPORT=" + strconv.Itoa(l.port), "PGUSER=" + l.user,
		"PGPASSWORD=" + l.password, "PGDATABASE=" + database, "PGSSLMODE=disable"}
}

// readNoFollow reads the last max bytes of a file the server's user
// writes, refusing a symlink (one to /etc/shadow would be read as root).
func readNoFollow(path string, max int64) []byte {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil
	} else if fi.Size() > max {
		f.Seek(fi.Size()-max, 0)
	}
	data, _ := io.ReadAll(io.LimitReader(f, max))
	return data
}

// serverErrors picks the FATAL and PANIC lines of the server's log, or
// its last lines.
func (l *Local) serverErrors() string {
	data := readNoFollow(filepath.Join(l.logDir(), "server.log"), 64<<10)
	var picked []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "FATAL:") || strings.Contains(line, "PANIC:") || strings.Contains(line, "ERROR:") || strings.HasPrefix(line, "drctl: ") {
			picked = append(picked, strings.TrimSpace(line))
		}
	}
	if len(picked) == 0 {
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		picked = lines[max(0, len(lines)-3):]
	}
	out := strings.Join(picked[max(0, len(picked)-5):], " | ")
	if len(out) > 1500 {
		out = out[len(out)-1500:]
	}
	return out
}

// Close stops the server (immediately: nothing in it is kept) and removes
// the sandbox.
func (l *Local) Close(ctx context.Context) error {
	var err error
	if _, serr := os.Stat(filepath.Join(l.DataDir(), "postmaster.pid")); serr == nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err = l.run(cctx, "pg_ctl", "stop", "-m", "immediate", "-w", "-D", l.DataDir())
		cancel()
		if err != nil {
			// Never leave a server running whose directory is gone.
			stopLeftoverServer(l.DataDir())
		}
	}
	if rerr := os.RemoveAll(l.dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// CleanLeftovers removes the sandboxes under root of drills whose process
// is gone (killed before its cleanup): their servers are stopped first.
func CleanLeftovers(root string) []string {
	dirs, _ := filepath.Glob(filepath.Join(root, sandboxPrefix+"*"))
	var removed []string
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue // not a sandbox, or not ours to judge
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || pid <= 0 || alive(pid) {
			continue // its drill still runs
		}
		stopLeftoverServer(filepath.Join(dir, "data"))
		os.RemoveAll(dir)
		removed = append(removed, dir)
	}
	return removed
}

// stopLeftoverServer kills the postmaster of a data directory (SIGQUIT:
// immediate shutdown), after checking its pid file names this directory.
func stopLeftoverServer(dataDir string) {
	raw, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	lines := strings.Split(string(raw), "\n")
	if len(lines) < 2 || strings.TrimSpace(lines[1]) != dataDir {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 1 || !isPostmasterOf(pid, dataDir) {
		return
	}
	syscall.Kill(pid, syscall.SIGQUIT)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// alive: a process exists (one we may not signal exists too).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// isPostmasterOf checks, before a signal, that pid is a postgres server
// running in dataDir: the pid file is the server's user's to write, and
// a planted one must not name another process.
func isPostmasterOf(pid int, dataDir string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(exe) != "postgres" {
		return false
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && cwd == dataDir
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort: the server listens on no TCP port, but its socket file name
// carries the port; a free one keeps the name unique.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func quoteConn(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
