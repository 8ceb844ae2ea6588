package physical

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
}

// Physical writes a base backup and its recovery settings into opt.Dir.
// Everything it reads from the repository is untrusted: tar entries are
// written only below their target directory (through os.Root), symlinks
// only when they point inside it, and a tablespace only to a directory the
// caller chose.
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
	res := &Result{ID: m.ID, StartLSN: m.Physical.StartLSN, StopLSN: m.Physical.StopLSN, Tablespaces: map[string]string{}}
	dirs, err := targetDirs(opt, res)
	if err != nil {
		return nil, err
	}
	res.Dir = dirs[baseKey(m)]
	if res.Dir == "" {
		return nil, fmt.Errorf("backup %s has no base.tar", m.ID)
	}
	for _, dir := range dirs {
		if err := requireEmptyDir(dir); err != nil {
			return nil, err
		}
	}
	roots := map[string]*os.Root{}
	defer func() {
		for _, r := range roots {
			r.Close()
		}
	}()
	for key, dir := range dirs {
		r, err := os.OpenRoot(dir)
		if err != nil {
			return nil, err
		}
		roots[key] = r
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
	if err := writeRecoveryConfig(dataRoot, opt); err != nil {
		return nil, err
	}
	if opt.RecoveryFile != "" {
		if err := writeRecoveryFile(opt); err != nil {
			return nil, err
		}
	}
	for _, dir := range dirs {
		if opt.Owner != nil {
			if err := chownTree(dir, *opt.Owner); err != nil {
				return nil, err
			}
		}
		if err := syncFS(dir); err != nil {
			return nil, fmt.Errorf("sync %s: %w", dir, err)
		}
	}
	if len(res.Tablespaces) == 0 {
		res.Tablespaces = nil
	}
	res.Seconds = time.Since(start).Seconds()
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
			case byPath:
				used[o.TablespacePath] = true
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

func requireEmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s is not empty: restore into a new or empty directory", dir)
	}
	return os.Chmod(dir, 0o700)
}

// ErrUnsafeEntry marks a tar entry that would write outside its target
// directory, or that a base backup never contains (devices, hard links).
var ErrUnsafeEntry = errors.New("unsafe tar entry")

func extractObject(ctx context.Context, opt Options, o catalog.Object, root *os.Root, progress restore.Progress, res *Result) error {
	stream, err := restore.OpenObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	tr := tar.NewReader(stream)
	buf := make([]byte, 1<<20)
	links := map[string]bool{} // symlinks written so far
	unsafe := func(name, why string) error {
		return fmt.Errorf("%s: %w %q: %s; refusing to restore this backup", o.Key, ErrUnsafeEntry, name, why)
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		name, why := entryName(hdr.Name)
		if why != "" {
			return unsafe(hdr.Name, why)
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if links[p] {
				return unsafe(hdr.Name, "it lies below the symlink "+p)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
		case tar.TypeReg:
			if dir := path.Dir(name); dir != "." {
				if err := root.MkdirAll(dir, 0o700); err != nil {
					return fmt.Errorf("%s: %w", o.Key, err)
				}
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(hdr.Mode)&0o700|0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			n, err := io.CopyBuffer(f, tr, buf)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", filepath.Join(root.Name(), name), err)
			}
			res.Files++
			res.Bytes += n
		case tar.TypeSymlink:
			target := hdr.Linkname
			if target == "" || strings.ContainsRune(target, 0) || path.IsAbs(target) {
				return unsafe(hdr.Name, fmt.Sprintf("a symlink to %q, outside the directory", target))
			}
			if resolved := path.Join(path.Dir(name), target); resolved == ".." || strings.HasPrefix(resolved, "../") {
				return unsafe(hdr.Name, fmt.Sprintf("a symlink to %q, outside the directory", target))
			}
			if dir := path.Dir(name); dir != "." {
				if err := root.MkdirAll(dir, 0o700); err != nil {
					return fmt.Errorf("%s: %w", o.Key, err)
				}
			}
			if err := root.Symlink(target, name); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			links[name] = true
		case tar.TypeLink:
			return unsafe(hdr.Name, fmt.Sprintf("a hard link to %q (base backups hold none)", hdr.Linkname))
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return unsafe(hdr.Name, "a device file or FIFO (base backups hold none)")
		default:
			return unsafe(hdr.Name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
		}
	}
	// The tar's end-of-archive blocks may leave padding unread.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return err
	}
	return stream.Check()
}

// entryName cleans a tar entry's name to a relative slash path, or says why
// it is refused: absolute, climbing out with "..", empty, or with a NUL.
func entryName(name string) (string, string) {
	switch {
	case strings.ContainsRune(name, 0):
		return "", "the name holds a NUL byte"
	case strings.HasPrefix(name, "/"):
		return "", "an absolute name"
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == ".." {
			return "", "the name climbs out with \"..\""
		}
	}
	clean := path.Clean(name)
	if clean == "." || clean == "" {
		return "", "an empty name"
	}
	return clean, ""
}

func writeObject(ctx context.Context, opt Options, o catalog.Object, root *os.Root, name string, progress restore.Progress) error {
	stream, err := restore.OpenObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, stream)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return stream.Check()
}

// replaceFile writes name afresh inside root: whatever the backup put
// under that name (a symlink included) is removed first, never written through.
func replaceFile(root *os.Root, name string, data []byte) error {
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rewriteTablespaceMap writes tablespace_map afresh from the locations
// chosen for the restore; PostgreSQL creates pg_tblspc's links from it when
// recovery starts. A line for a tablespace the manifest does not list would
// make PostgreSQL link to a place nobody chose: refused.
func rewriteTablespaceMap(root *os.Root, tablespaces map[string]string) error {
	data, err := root.ReadFile("tablespace_map")
	if errors.Is(err, fs.ErrNotExist) && len(tablespaces) == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tablespace_map: %w", err)
	}
	var out strings.Builder
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		oid, _, _ := strings.Cut(line, " ")
		dir, ok := tablespaces[oid]
		if !ok {
			return fmt.Errorf("tablespace_map names tablespace %q, which the backup's manifest does not list: refusing", oid)
		}
		seen[oid] = true
		out.WriteString(oid + " " + dir + "\n")
	}
	for oid := range tablespaces {
		if !seen[oid] {
			return fmt.Errorf("tablespace_map lacks tablespace %s, which the backup's manifest lists", oid)
		}
	}
	return replaceFile(root, "tablespace_map", []byte(out.String()))
}

// writeRecoveryConfig makes the directory start in targeted recovery.
func writeRecoveryConfig(root *os.Root, opt Options) error {
	var conf strings.Builder
	conf.WriteString("\n# Added by drctl restore of backup " + opt.Manifest.ID + "\n")
	set := func(k, v string) { fmt.Fprintf(&conf, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''")) }
	set("restore_command", opt.RestoreCommand)
	t := opt.Target
	switch {
	case t.Time != "":
		set("recovery_target_time", t.Time)
	case t.LSN != "":
		set("recovery_target_lsn", t.LSN)
	case t.Name != "":
		set("recovery_target_name", t.Name)
	case t.XID != "":
		set("recovery_target_xid", t.XID)
	}
	timeline := t.Timeline
	if timeline == "" {
		timeline = "latest"
	}
	set("recovery_target_timeline", timeline)
	if !t.Empty() {
		action := t.Action
		if action == "" {
			action = "promote"
		}
		if opt.PauseAtTarget {
			action = "pause"
		}
		set("recovery_target_action", action)
	}
	const auto = "postgresql.auto.conf"
	old, err := root.ReadFile(auto)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := replaceFile(root, auto, append(old, conf.String()...)); err != nil {
		return err
	}
	if err := root.Remove("standby.signal"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return replaceFile(root, "recovery.signal", nil)
}

// writeRecoveryFile writes the configuration restore_command reads, which
// holds the identity: created afresh, readable by the server's user only.
func writeRecoveryFile(opt Options) error {
	path := opt.RecoveryFile
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("recovery config %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("recovery config: %w", err)
	}
	if opt.Owner != nil {
		if err := f.Chown(opt.Owner.UID, opt.Owner.GID); err != nil {
			f.Close()
			return fmt.Errorf("recovery config %s: %w", path, err)
		}
	}
	if _, err := f.Write(opt.RecoveryFileContent); err != nil {
		f.Close()
		return fmt.Errorf("recovery config %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// DataOwner is who must own a restored data directory: when drctl runs as
// root, the existing directory's owner, or else the postgres OS user; nil
// when not root.
func DataOwner(dir string) (*Owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if fi, err := os.Stat(dir); err == nil {
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

func chownTree(dir string, o Owner) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, o.UID, o.GID)
	})
}

// syncFS flushes the whole filesystem holding dir once, instead of an fsync
// per file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
