package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
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

// PhysicalOptions configure writing a base backup into a data directory.
type PhysicalOptions struct {
	Store    storage.Store
	Manifest *catalog.Manifest
	Keys     *codec.Keys
	// Dir is the data directory to create; it must be missing or empty.
	Dir string
	// TablespaceMap maps a tablespace's OID or original path to a new one.
	TablespaceMap map[string]string
	Target        Target
	// RestoreCommand is PostgreSQL's restore_command (drctl wal-fetch).
	RestoreCommand string
	// Owner, when set, receives every file written (PostgreSQL must own
	// its data directory and refuses to run as root).
	Owner *Owner
	// PauseAtTarget writes recovery_target_action = 'pause' whatever
	// Target.Action says, for Start to read the reached point and then act.
	PauseAtTarget bool
	Progress      Progress
	Logger        *slog.Logger
}

// Owner is a numeric user and group.
type Owner struct{ UID, GID int }

// PhysicalResult reports a written data directory.
type PhysicalResult struct {
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
func Physical(ctx context.Context, opt PhysicalOptions) (*PhysicalResult, error) {
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
	res := &PhysicalResult{ID: m.ID, StartLSN: m.Physical.StartLSN, StopLSN: m.Physical.StopLSN, Tablespaces: map[string]string{}}
	dirs := map[string]string{} // object key -> directory
	for _, o := range m.Objects {
		if o.Role != catalog.RoleTar {
			continue
		}
		dir := opt.Dir
		if o.TablespaceOID != "" {
			dir = o.TablespacePath
			if mapped, ok := opt.TablespaceMap[o.TablespaceOID]; ok {
				dir = mapped
			} else if mapped, ok := opt.TablespaceMap[o.TablespacePath]; ok {
				dir = mapped
			}
			res.Tablespaces[o.TablespaceOID] = dir
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		if err := requireEmptyDir(abs); err != nil {
			return nil, err
		}
		dirs[o.Key] = abs
	}
	res.Dir = dirs[baseKey(m)]
	if res.Dir == "" {
		return nil, fmt.Errorf("backup %s has no base.tar", m.ID)
	}
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
			err = extractObject(ctx, opt, o, dirs[o.Key], progress, res)
		case catalog.RoleManifest:
			// Beside the data, as pg_basebackup leaves it: pg_verifybackup reads it.
			err = writeObject(ctx, opt, o, filepath.Join(res.Dir, "backup_manifest"), progress)
		}
		if err != nil {
			return nil, err
		}
		done += o.Size
	}
	if len(res.Tablespaces) > 0 {
		if err := rewriteTablespaceMap(res.Dir, res.Tablespaces); err != nil {
			return nil, err
		}
	}
	if err := writeRecoveryConfig(res.Dir, opt); err != nil {
		return nil, err
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

func extractObject(ctx context.Context, opt PhysicalOptions, o catalog.Object, dir string, progress Progress, res *PhysicalResult) error {
	stream, err := openObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	tr := tar.NewReader(stream)
	buf := make([]byte, 1<<20)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		path, err := safeJoin(dir, hdr.Name)
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(hdr.Mode)&0o700|0o600)
			if err != nil {
				return err
			}
			n, err := io.CopyBuffer(f, tr, buf)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			res.Files++
			res.Bytes += n
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unsupported tar entry %q (type %c)", o.Key, hdr.Name, hdr.Typeflag)
		}
	}
	// The tar's end-of-archive blocks may leave padding unread.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return err
	}
	return stream.check()
}

func writeObject(ctx context.Context, opt PhysicalOptions, o catalog.Object, path string, progress Progress) error {
	stream, err := openObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
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
	return stream.check()
}

// safeJoin refuses tar entries that would land outside dir.
func safeJoin(dir, name string) (string, error) {
	rel := strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/")
	if rel == "" || rel == "." || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\x00") {
		return "", fmt.Errorf("invalid tar entry name %q", name)
	}
	for _, seg := range strings.Split(rel, "/") {
		if seg == ".." {
			return "", fmt.Errorf("tar entry %q escapes the directory", name)
		}
	}
	return filepath.Join(dir, filepath.FromSlash(rel)), nil
}

// rewriteTablespaceMap points tablespace_map at the restored locations;
// PostgreSQL creates pg_tblspc's links from it when recovery starts.
func rewriteTablespaceMap(dir string, tablespaces map[string]string) error {
	path := filepath.Join(dir, "tablespace_map")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tablespace_map: %w", err)
	}
	var out strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		oid, _, ok := strings.Cut(line, " ")
		if newDir, mapped := tablespaces[oid]; ok && mapped {
			line = oid + " " + newDir
		}
		out.WriteString(line + "\n")
	}
	return os.WriteFile(path, []byte(out.String()), 0o600)
}

// writeRecoveryConfig makes the directory start in targeted recovery.
func writeRecoveryConfig(dir string, opt PhysicalOptions) error {
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
	f, err := os.OpenFile(filepath.Join(dir, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(conf.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir, "standby.signal"))
	return os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600)
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
