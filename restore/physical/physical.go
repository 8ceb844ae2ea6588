package physical

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/restore"
	"github.com/drctl/drctl/storage"
)

// Target says where recovery stops. At most one of Time, LSN, Name, XID.
type Target struct {
	Time     string // recovery_target_time
	LSN      string // recovery_target_lsn
	Name     string // recovery_target_name (a pg_create_restore_point name)
	XID      string // recovery_target_xid
	Timeline string // recovery_target_timeline: "latest" (default), "current" or a number
	// Action is recovery_target_action: "promote" (default), "pause" or "shutdown".
	Action string
}

// Empty reports whether no target is set: recover to the end of the archive.
func (t Target) Empty() bool { return t.Time == "" && t.LSN == "" && t.Name == "" && t.XID == "" }

// Validate checks that at most one target is set and the names are known.
func (t Target) Validate() error {
	n := 0
	for _, v := range []string{t.Time, t.LSN, t.Name, t.XID} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return errors.New("give at most one of --target-time, --target-lsn, --target-name, --target-xid")
	}
	switch t.Action {
	case "", "promote", "pause", "shutdown":
	default:
		return fmt.Errorf("target action %q: want promote, pause or shutdown", t.Action)
	}
	if strings.ContainsAny(t.Time+t.LSN+t.Name+t.XID+t.Timeline, "'\n\\") {
		return errors.New("recovery target contains a quote, backslash or newline")
	}
	return nil
}

// Reachable reports whether recovery from base backup m can reach the
// target: the backup ended before the target time or LSN. (Names and xids
// cannot be placed in time: any base backup may reach them.)
func (t Target) Reachable(m *catalog.Manifest) bool {
	if m.Physical == nil {
		return false
	}
	if at, ok := parseTargetTime(t.Time); ok && m.EndTime.After(at) {
		return false
	}
	if t.LSN != "" {
		target, err := wal.ParseLSN(t.LSN)
		stop, serr := wal.ParseLSN(m.Physical.StopLSN)
		if err == nil && (serr != nil || stop > target) {
			return false
		}
	}
	return true
}

func parseTargetTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999-07", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// Options configure writing a base backup into a data directory.
type Options struct {
	Store    storage.Store
	Manifest *catalog.Manifest
	Keys     *codec.Keys
	// Dir is the data directory to create; it must be missing or empty.
	Dir string
	// TablespaceMap maps a tablespace's OID or original path to a new one.
	TablespaceMap map[string]string
	// TablespaceOriginal lets a tablespace that TablespaceMap does not name
	// be restored to the path the backup recorded. Off, such a tablespace
	// is refused: the path comes from the repository, which is untrusted.
	TablespaceOriginal bool
	Target             Target
	// RestoreCommand is PostgreSQL's restore_command (drctl wal-fetch).
	RestoreCommand string
	// Owner, when set, receives every file written (PostgreSQL must own
	// its data directory and refuses to run as root).
	Owner *Owner
	// SkipExternalSymlinks leaves out, with a warning, symlinks that point
	// outside the directory (a pg_log linked to /var/log, say) instead of
	// refusing the backup.
	SkipExternalSymlinks bool
	// RecoveryFile, when set, receives RecoveryFileContent (mode 0600,
	// owned by Owner): the configuration restore_command reads. It is
	// written after the data, before the directory is synced.
	RecoveryFile        string
	RecoveryFileContent []byte
	// PauseAtTarget writes recovery_target_action = 'pause' whatever
	// Target.Action says, for Start to read the reached point and then act.
	PauseAtTarget bool
	Progress      restore.Progress
	Logger        *slog.Logger
}

// Owner is a numeric user and group.
type Owner struct{ UID, GID int }

// Result reports a written data directory.
type Result struct {
	ID          string            `json:"id"`
	Dir         string            `json:"dir"`
	Tablespaces map[string]string `json:"tablespaces,omitempty"`
	StartLSN    string            `json:"backup_start_lsn"`
	StopLSN     string            `json:"backup_stop_lsn"`
	Files       int               `json:"files"`
	Bytes       int64             `json:"bytes"`
	Seconds     float64           `json:"seconds"`
	// Warnings name settings of the backup's configuration that drctl
	// overrode because they run commands or load code.
	Warnings []string `json:"warnings,omitempty"`

	mapped map[string]bool // tablespace tars the caller mapped
}

// Restore writes a base backup and its recovery settings into opt.Dir.
// Everything it reads from the repository is untrusted: tar entries are
// written only below their target directory (through os.Root), symlinks
// only when they resolve inside it, a tablespace only to a directory the
// caller chose, and settings of the backup's configuration that run
// commands or load code are overridden. A restore that fails leaves its
// directories empty: nothing half-restored can be started.
func Restore(ctx context.Context, opt Options) (*Result, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	m := opt.Manifest
	if m.Kind != catalog.KindPhysical {
		return nil, fmt.Errorf("backup %s is a %s backup: restore it with --into DSN", m.ID, m.Kind)
	}
	if err := opt.Target.Validate(); err != nil {
		return nil, err
	}
	if !opt.Keys.CanDecrypt(m.Encryption) {
		return nil, codec.ErrNoIdentity
	}
	start := time.Now()
	res := &Result{ID: m.ID, StartLSN: m.Physical.StartLSN, StopLSN: m.Physical.StopLSN, Tablespaces: map[string]string{}, mapped: map[string]bool{}}
	dirs, err := targetDirs(opt, res)
	if err != nil {
		return nil, err
	}
	res.Dir = dirs[baseKey(m)]
	if res.Dir == "" {
		return nil, fmt.Errorf("backup %s has no base.tar", m.ID)
	}
	roots := map[string]*os.Root{}
	var created []string
	ok, wroteRecoveryFile := false, false
	defer func() {
		for _, r := range roots {
			if !ok {
				clearTarget(r) // nothing of a failed restore may be started
			}
			r.Close()
		}
		if !ok {
			for _, dir := range created {
				os.Remove(dir)
			}
			if wroteRecoveryFile {
				os.Remove(opt.RecoveryFile) // it holds the identity
			}
		}
	}()
	for key, dir := range dirs {
		fromRepository := key != baseKey(m) && !res.mapped[key]
		r, made, err := openTarget(dir, opt.Owner, fromRepository)
		if err != nil {
			return nil, err
		}
		roots[key] = r
		if made {
			created = append(created, dir)
		}
	}
	dataRoot := roots[baseKey(m)]
	var total int64
	for _, o := range m.Objects {
		total += o.Size
	}
	var done int64
	progress := func(d, _ int64) {
		if opt.Progress != nil {
			opt.Progress(done+d, total)
		}
	}
	for _, o := range m.Objects {
		var err error
		switch o.Role {
		case catalog.RoleTar:
			err = extractObject(ctx, opt, o, roots[o.Key], progress, res)
		case catalog.RoleManifest:
			// Beside the data, as pg_basebackup leaves it: pg_verifybackup reads it.
			err = writeObject(ctx, opt, o, dataRoot, "backup_manifest", progress)
		}
		if err != nil {
			return nil, err
		}
		done += o.Size
	}
	if err := rewriteTablespaceMap(dataRoot, res.Tablespaces); err != nil {
		return nil, err
	}
	if err := writeRecoveryConfig(dataRoot, opt, res); err != nil {
		return nil, err
	}
	if opt.RecoveryFile != "" {
		wroteRecoveryFile = true
		if err := writeRecoveryFile(opt); err != nil {
			return nil, err
		}
	}
	for key, r := range roots {
		if opt.Owner != nil {
			if err := chownTree(r, *opt.Owner); err != nil {
				return nil, fmt.Errorf("give %s to the server's user: %w", dirs[key], err)
			}
		}
		if err := syncFS(r); err != nil {
			return nil, fmt.Errorf("sync %s: %w", dirs[key], err)
		}
	}
	if len(res.Tablespaces) == 0 {
		res.Tablespaces = nil
	}
	res.Seconds = time.Since(start).Seconds()
	ok = true
	return res, nil
}

// targetDirs decides where each tar goes: base.tar into opt.Dir, each
// tablespace into the directory the caller mapped it to, or to its original
// location only when the caller allowed that. The manifest's paths are never
// trusted on their own: anyone who can write to the repository could name
// any directory of this host there.
func targetDirs(opt Options, res *Result) (map[string]string, error) {
	m := opt.Manifest
	dirs := map[string]string{} // object key -> absolute directory
	used := map[string]bool{}
	for k := range opt.TablespaceMap {
		used[k] = false
	}
	for _, o := range m.Objects {
		if o.Role != catalog.RoleTar {
			continue
		}
		dir := opt.Dir
		if o.TablespaceOID != "" {
			if !validOID(o.TablespaceOID) {
				return nil, fmt.Errorf("backup %s: tablespace OID %q is not a number: refusing", m.ID, o.TablespaceOID)
			}
			mapped, byOID := opt.TablespaceMap[o.TablespaceOID]
			byPath := false
			if !byOID && o.TablespacePath != "" {
				mapped, byPath = opt.TablespaceMap[o.TablespacePath]
			}
			switch {
			case byOID:
				used[o.TablespaceOID] = true
				res.mapped[o.Key] = true
			case byPath:
				used[o.TablespacePath] = true
				res.mapped[o.Key] = true
			case opt.TablespaceOriginal && filepath.IsAbs(o.TablespacePath) && filepath.Clean(o.TablespacePath) == o.TablespacePath:
				mapped = o.TablespacePath
			default:
				return nil, fmt.Errorf("backup %s holds tablespace %s (originally %q): give --tablespace-map %s=NEWDIR, or --tablespace-original to restore it where it was",
					m.ID, o.TablespaceOID, o.TablespacePath, o.TablespaceOID)
			}
			dir = mapped
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		if o.TablespaceOID != "" {
			if _, dup := res.Tablespaces[o.TablespaceOID]; dup {
				return nil, fmt.Errorf("backup %s lists tablespace %s twice: refusing", m.ID, o.TablespaceOID)
			}
			res.Tablespaces[o.TablespaceOID] = abs
		}
		for _, other := range dirs {
			if within(abs, other) || within(other, abs) {
				return nil, fmt.Errorf("backup %s: %s and %s overlap: each tablespace needs a directory of its own, outside the data directory", m.ID, other, abs)
			}
		}
		dirs[o.Key] = abs
	}
	for k, ok := range used {
		if !ok {
			return nil, fmt.Errorf("--tablespace-map %s: backup %s has no such tablespace (OID or original path)", k, m.ID)
		}
	}
	return dirs, nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func validOID(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func baseKey(m *catalog.Manifest) string {
	for _, o := range m.Objects {
		if o.Role == catalog.RoleTar && o.TablespaceOID == "" {
			return o.Key
		}
	}
	return ""
}

// DataOwner is who must own a restored data directory: when drctl runs as
// root, the existing directory's owner, or else the postgres OS user; nil
// when not root.
func DataOwner(dir string) (*Owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			return &Owner{UID: int(st.Uid), GID: int(st.Gid)}, nil
		}
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New("running as root: PostgreSQL must own its data directory; create DIR owned by the server's user, or add a postgres OS user")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &Owner{UID: uid, GID: gid}, nil
}
