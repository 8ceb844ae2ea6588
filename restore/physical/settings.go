package physical

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
)

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

// overridden are settings that run commands or load code: a backup is
// untrusted input, so the restored server starts with them reset
// (--start-option sets them again, explicitly). Archiving is off: a
// restored copy must not archive into the repository it came from.
var overridden = []struct{ name, value string }{
	{"archive_mode", "off"},
	{"archive_command", ""},
	{"archive_library", ""},
	{"archive_cleanup_command", ""},
	{"recovery_end_command", ""},
	{"ssl_passphrase_command", ""},
	{"dynamic_library_path", "$libdir"},
	{"jit_provider", "llvmjit"},
	// Settings that write files where the server's user can: kept inside
	// the data directory.
	{"log_directory", "log"},
	{"log_filename", "postgresql-%Y-%m-%d_%H%M%S.log"},
	{"external_pid_file", ""},
	// Recovery targets come from drctl alone.
	{"recovery_target", ""},
	{"recovery_target_time", ""},
	{"recovery_target_lsn", ""},
	{"recovery_target_name", ""},
	{"recovery_target_xid", ""},
}

// preloadSettings load libraries at start: kept when every entry is a bare
// library name (found in $libdir), emptied when one is a path.
var preloadSettings = []string{"shared_preload_libraries", "local_preload_libraries", "session_preload_libraries"}

// Compiled when first used, not at every drctl start.
var (
	confName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*`) })
	bareLib  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`) })
)

// parseConfLine reads one "name = value" line of postgresql.conf: the
// value is a quoted string (” and \' escape a quote) or a bare word, and
// a comment may follow.
func parseConfLine(line string) (string, string, bool) {
	m := confName().FindStringSubmatchIndex(line)
	if m == nil {
		return "", "", false
	}
	name, rest := line[m[2]:m[3]], line[m[1]:]
	if !strings.HasPrefix(rest, "'") {
		if i := strings.IndexAny(rest, " \t#"); i >= 0 {
			rest = rest[:i]
		}
		return name, rest, true
	}
	var v strings.Builder
	for i := 1; i < len(rest); i++ {
		switch c := rest[i]; {
		case c == '\\' && i+1 < len(rest):
			i++
			v.WriteByte(rest[i])
		case c == '\'' && i+1 < len(rest) && rest[i+1] == '\'':
			i++
			v.WriteByte('\'')
		case c == '\'':
			return name, v.String(), true
		default:
			v.WriteByte(c)
		}
	}
	return name, v.String(), true // unterminated: PostgreSQL refuses it anyway
}

// configValues reads name = value settings of the backup's postgresql.conf
// and postgresql.auto.conf (the later wins, as in PostgreSQL).
func configValues(root *os.Root) map[string]string {
	out := map[string]string{}
	for _, file := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		data, err := root.ReadFile(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if name, value, ok := parseConfLine(sc.Text()); ok {
				out[strings.ToLower(name)] = value
			}
		}
	}
	return out
}

// neutralizeConf comments out the lines of the backup's postgresql.conf
// that postgresql.auto.conf cannot override: data_directory (the server
// would run another directory, with that one's settings) and include
// directives (they could bring such a line from anywhere).
func neutralizeConf(root *os.Root, res *Result) error {
	const file = "postgresql.conf"
	data, err := root.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	changed := false
	for i, line := range lines {
		name, _, ok := parseConfLine(line)
		switch strings.ToLower(name) {
		case "data_directory", "include", "include_dir", "include_if_exists", "config_file", "hba_file", "ident_file":
			if ok {
				lines[i] = "# disabled by drctl restore (a backup is untrusted input): " + line
				res.Warnings = append(res.Warnings, "the backup's postgresql.conf line "+strings.TrimSpace(line)+" was disabled")
				changed = true
			}
		}
	}
	if !changed {
		return nil
	}
	return replaceFile(root, file, []byte(strings.Join(lines, "\n")))
}

// writeRecoveryConfig makes the directory start in targeted recovery, with
// the settings that run commands or load code overridden.
func writeRecoveryConfig(root *os.Root, opt Options, res *Result) error {
	var conf strings.Builder
	set := func(k, v string) { fmt.Fprintf(&conf, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''")) }
	values := configValues(root)
	conf.WriteString("\n# Added by drctl restore of backup " + opt.Manifest.ID + ".\n")
	conf.WriteString("# Settings that run commands or load code are reset: a backup is untrusted input.\n")
	if err := neutralizeConf(root, res); err != nil {
		return err
	}
	for _, o := range overridden {
		if v, ok := values[o.name]; ok && v != o.value {
			res.Warnings = append(res.Warnings, fmt.Sprintf("the backup's %s = %q was reset to %q", o.name, v, o.value))
		}
		set(o.name, o.value)
	}
	for _, name := range preloadSettings {
		v := values[name]
		var keep []string
		bad := false
		for _, lib := range strings.Split(v, ",") {
			lib = strings.Trim(strings.TrimSpace(lib), `"`)
			switch {
			case lib == "":
			case bareLib().MatchString(lib):
				keep = append(keep, lib)
			default:
				bad = true
			}
		}
		if bad {
			res.Warnings = append(res.Warnings, fmt.Sprintf("the backup's %s = %q names a library by path: emptied", name, v))
			keep = nil
		}
		set(name, strings.Join(keep, ","))
	}
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
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
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
