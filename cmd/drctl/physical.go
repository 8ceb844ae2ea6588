package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/physical"
	"github.com/drctl/drctl/engine/wal"
	rphysical "github.com/drctl/drctl/restore/physical"
	"github.com/drctl/drctl/storage"
)

func newBaseBackupCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		bf      backupFlags
		walWait time.Duration
	)
	cmd := &cobra.Command{
		Use:   "basebackup",
		Short: "Take a physical base backup over the replication protocol",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			labels, err := parseLabels(bf.labels)
			if err != nil {
				return err
			}
			w, err := g.openWriter(cmd, stderr, bf.noEncryption)
			if err != nil {
				return err
			}
			copt, err := w.codecOptions(0)
			if err != nil {
				return err
			}
			m, err := physical.BaseBackup(cmd.Context(), physical.BaseBackupOptions{Codec: copt, Signer: w.signer,
				Store: w.store, DSN: w.dsn, Keys: w.keys, AllowUnencrypted: bf.noEncryption, Labels: labels,
				ToolVersion: version, WALWait: walWait, Logger: w.Logger,
			})
			if err != nil {
				return err
			}
			if bf.asJSON {
				return writeJSON(stdout, summarize(m))
			}
			fmt.Fprintf(stdout, "base backup %s: %s read, %s stored, WAL %s..%s (%.1fs)\n", m.ID,
				humanBytes(m.RawSize()), humanBytes(m.StoredSize()), m.Physical.StartLSN, m.Physical.StopLSN,
				m.EndTime.Sub(m.StartTime).Seconds())
			return nil
		},
	}
	bf.register(cmd, g, "server to back up (a role with REPLICATION): URL or key=value conninfo (env DRCTL_DSN; default: PG* variables)")
	cmd.Flags().DurationVar(&walWait, "wal-wait", 2*time.Minute, "how long to wait for the backup's WAL to reach the archive")
	return cmd
}

func newWALPushCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON, noEncryption bool
	var ahead int
	cmd := &cobra.Command{
		Use:   "wal-push PATH",
		Short: "Archive one WAL file: archive_command = 'drctl wal-push %p'",
		Long: "Archive one WAL segment, timeline history or backup history file. Exits 0 only once the file\n" +
			"is stored durably, or when the identical file is already archived; a different file under the\n" +
			"same name is refused (exit 1), never overwritten.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.resolve(cmd, stderr)
			if err != nil {
				return err
			}
			keys, err := s.encryptKeys()
			if err != nil {
				return err
			}
			if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
				// A process that lives for one segment: collecting while
				// the encoders allocate costs it milliseconds; the memory
				// limit (main's) still bounds the heap.
				debug.SetGCPercent(400)
			}
			// Opened while the segment is compressed: loading the S3
			// client's configuration costs a few milliseconds per segment.
			st := storage.OpenInBackground("the repository", func() (storage.Store, error) { return s.openStore(cmd.Context()) })
			copt, err := s.codecOptions(0)
			if err != nil {
				return err
			}
			signer, err := s.signer()
			if err != nil {
				return err
			}
			a := &wal.Archive{Store: st, Keys: keys, AllowUnencrypted: noEncryption, Codec: copt, Signer: signer}
			if ahead < 0 || ahead > 16 {
				return &exitCodeError{2, fmt.Errorf("--push-ahead %d: give 0 to 16", ahead)}
			}
			res, err := a.PushAhead(cmd.Context(), args[0], ahead, s.Logger)
			if oe := (*storage.OpenError)(nil); errors.As(err, &oe) {
				return oe.Err // the repository's problem, not this file's
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdout, res)
			}
			s.Logger.Info("archived", "file", res.Name, "key", res.Key, "already_archived", res.AlreadyArchived)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVar(&noEncryption, "no-encryption", false, "archive unencrypted when no recipients are configured")
	cmd.Flags().IntVar(&ahead, "push-ahead", 0, "also archive up to N (at most 16) of the next segments PostgreSQL marked ready, two at a time, so that bursts of WAL do not pile up; their own archive_command then returns at once")
	return cmd
}

func newWALReceiveCommand(g *globalFlags, stderr io.Writer) *cobra.Command {
	var (
		slot         string
		noEncryption bool
		flush        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "wal-receive --slot NAME",
		Short: "Stream WAL from a physical replication slot into the archive (runs until stopped)",
		Long: "Stream WAL over a physical replication slot (created when missing) and archive each completed\n" +
			"segment; the unfinished segment is stored every --flush-interval, so the recovery point is\n" +
			"seconds old. Survives server restarts and network drops. The slot holds WAL on the server\n" +
			"until it is stored: set max_slot_wal_keep_size so a receiver that is down for long cannot\n" +
			"fill the server's disk.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := g.openWriter(cmd, stderr, noEncryption)
			if err != nil {
				return err
			}
			copt, err := w.codecOptions(0)
			if err != nil {
				return err
			}
			return physical.Receive(cmd.Context(), physical.ReceiveOptions{Codec: copt,
				Store: w.store, DSN: w.dsn, Keys: w.keys, AllowUnencrypted: noEncryption, Slot: slot, Signer: w.signer,
				FlushInterval: flush, Logger: w.Logger,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&g.dsn, "dsn", "", "server to stream from (a role with REPLICATION) (env DRCTL_DSN; default: PG* variables)")
	f.StringVar(&slot, "slot", "drctl", "physical replication slot")
	f.DurationVar(&flush, "flush-interval", time.Second, "how often the unfinished segment is stored")
	f.BoolVar(&noEncryption, "no-encryption", false, "archive unencrypted when no recipients are configured")
	return cmd
}

// walFetchErrorExit is the exit status for real errors in wal-fetch:
// PostgreSQL treats a status above 125 as fatal and stops recovery, where
// any other failure would be taken for the end of the archive and end
// recovery early, silently losing data.
const walFetchErrorExit = 126

func newWALFetchCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var segSize int64
	var prefetch int
	cmd := &cobra.Command{
		Use:   "wal-fetch NAME DEST",
		Short: "Fetch one archived WAL file: restore_command = 'drctl wal-fetch %f %p'",
		Long: "Fetch one archived WAL file to DEST. Exits 1, quietly, when the archive has no such file (the\n" +
			"normal end of recovery); exits 126 on errors, so that PostgreSQL stops recovery rather than\n" +
			"ending it early. Prefetches the following segments in the background.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			fail := func(err error) error { return &exitCodeError{walFetchErrorExit, err} }
			s, err := g.resolve(cmd, stderr)
			if err != nil {
				return fail(err)
			}
			keys, err := s.decryptKeys()
			if err != nil {
				return fail(err)
			}
			st, err := s.openStore(cmd.Context())
			if err != nil {
				return fail(err)
			}
			verifier, err := s.verifier()
			if err != nil {
				return fail(err)
			}
			a := &wal.Archive{Store: st, Keys: keys, SegmentSize: segSize, Verifier: verifier}
			err = a.FetchWithPrefetch(cmd.Context(), args[0], args[1], wal.PrefetchOptions{
				Count: prefetch, Spawn: spawnPrefetch(cmd, segSize),
			})
			if errors.Is(err, wal.ErrNotFound) {
				return &exitCodeError{1, errQuiet}
			}
			if err != nil {
				return fail(err)
			}
			return nil
		},
	}
	cmd.Flags().Int64Var(&segSize, "segment-size", wal.DefaultSegmentSize, "wal_segment_size of the cluster, in bytes")
	cmd.Flags().IntVar(&prefetch, "prefetch", 8, "segments to fetch ahead in the background (0 disables)")
	return cmd
}

func newWALPrefetchCommand(g *globalFlags, stderr io.Writer) *cobra.Command {
	var segSize int64
	var count int
	cmd := &cobra.Command{
		Use:    "wal-prefetch NAME SPOOL",
		Short:  "Fetch the segments after NAME into SPOOL (started by wal-fetch)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.resolve(cmd, stderr)
			if err != nil {
				return err
			}
			keys, err := s.decryptKeys()
			if err != nil {
				return err
			}
			st, err := s.openStore(cmd.Context())
			if err != nil {
				return err
			}
			verifier, err := s.verifier()
			if err != nil {
				return err
			}
			a := &wal.Archive{Store: st, Keys: keys, SegmentSize: segSize, Verifier: verifier}
			return a.Prefetch(cmd.Context(), args[0], args[1], count)
		},
	}
	cmd.Flags().Int64Var(&segSize, "segment-size", wal.DefaultSegmentSize, "wal_segment_size in bytes")
	cmd.Flags().IntVar(&count, "count", 8, "segments to fetch")
	return cmd
}

// spawnPrefetch starts `drctl wal-prefetch` detached, with this process's
// global flags, so that it outlives this restore_command call.
func spawnPrefetch(cmd *cobra.Command, segSize int64) func(name, spool string, count int) error {
	return func(name, spool string, count int) error {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		args := []string{}
		cmd.Root().PersistentFlags().Visit(func(f *pflag.Flag) {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		})
		args = append(args, "wal-prefetch", "--segment-size", strconv.FormatInt(segSize, 10), "--count", strconv.Itoa(count), name, spool)
		devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer devnull.Close()
		p, err := os.StartProcess(exe, append([]string{exe}, args...), &os.ProcAttr{
			Env: os.Environ(), Files: []*os.File{devnull, devnull, devnull},
			Sys: &syscall.SysProcAttr{Setsid: true},
		})
		if err != nil {
			return err
		}
		return p.Release()
	}
}

// physicalRestoreFlags are restore's options for base backups.
type physicalRestoreFlags struct {
	to             string
	target         rphysical.Target
	tablespaceMap  []string
	tsOriginal     bool
	skipLinks      bool
	start          bool
	startOptions   []string
	recoveryConfig string
}

func (p *physicalRestoreFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.to, "to", "", "write a base backup into this data directory (missing or empty) for point-in-time recovery")
	f.StringVar(&p.target.Time, "target-time", "", "recover up to this time (recovery_target_time), e.g. '2026-11-26 14:31:07.25+00'")
	f.StringVar(&p.target.LSN, "target-lsn", "", "recover up to this WAL location (recovery_target_lsn)")
	f.StringVar(&p.target.Name, "target-name", "", "recover up to this restore point (recovery_target_name)")
	f.StringVar(&p.target.XID, "target-xid", "", "recover up to this transaction (recovery_target_xid)")
	f.StringVar(&p.target.Timeline, "target-timeline", "latest", "timeline to follow: latest, current or a number")
	f.StringVar(&p.target.Action, "target-action", "promote", "at the target: promote, pause or shutdown")
	f.StringArrayVar(&p.tablespaceMap, "tablespace-map", nil, "OLD=NEW: restore the tablespace with OID or path OLD into NEW (repeatable)")
	f.BoolVar(&p.tsOriginal, "tablespace-original", false, "restore tablespaces not named by --tablespace-map to their original paths (taken from the backup: trust it first)")
	f.BoolVar(&p.skipLinks, "skip-external-symlinks", false, "leave out symlinks of the backup that point outside the data directory (e.g. pg_log -> /var/log/...) instead of refusing it")
	f.BoolVar(&p.start, "start", false, "start PostgreSQL and wait until recovery reached the target")
	f.StringArrayVar(&p.startOptions, "start-option", nil, "name=value server setting for --start, e.g. port=5433 (repeatable)")
	f.StringVar(&p.recoveryConfig, "recovery-config", "", "where to write the configuration restore_command uses (default DIR.drctl-recovery.yaml, beside DIR)")
}

func runPhysicalRestore(cmd *cobra.Command, g *globalFlags, p *physicalRestoreFlags, ref string, asJSON bool, stdout, stderr io.Writer) error {
	s, st, err := g.open(cmd, stderr)
	if err != nil {
		return err
	}
	keys, err := s.decryptKeys()
	if err != nil {
		return err
	}
	if err := p.target.Validate(); err != nil {
		return &exitCodeError{2, err}
	}
	tsMap := map[string]string{}
	for _, kv := range p.tablespaceMap {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return &exitCodeError{2, fmt.Errorf("--tablespace-map %q: want OLD=NEW", kv)}
		}
		tsMap[k] = v
	}
	verifier, err := s.verifier()
	if err != nil {
		return err
	}
	m, err := catalog.Resolve(cmd.Context(), st, ref, catalog.Query{Kind: catalog.KindPhysical, Accept: p.target.Reachable,
		Purpose: "that ends before the recovery target", Verifier: verifier})
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(p.to)
	if err != nil {
		return err
	}
	// What --start needs is checked before hours of extraction.
	var login *pgdsn.DSN
	var pgCtl string
	if p.start {
		// Only --dsn itself names the login role: DRCTL_DSN and the
		// config file's dsn name the server backed up, never this one.
		if cmd.Flags().Changed("dsn") {
			if login, err = pgdsn.Parse(g.dsn); err != nil {
				return &exitCodeError{2, fmt.Errorf("--dsn: %w", err)}
			}
		}
		if pgCtl, err = s.program("pg_ctl"); err != nil {
			return err
		}
	}
	owner, err := rphysical.DataOwner(dir)
	if err != nil {
		return err
	}
	cfgPath := p.recoveryConfig
	if cfgPath == "" {
		cfgPath = dir + ".drctl-recovery.yaml"
	}
	recoveryCfg, err := recoveryConfig(s)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	restoreCmd := fmt.Sprintf("%s --config %s wal-fetch --segment-size %d %%f %%p", exe, cfgPath, m.Physical.WALSegmentSize)
	bar := newProgressBar(stderr, !asJSON)
	res, err := rphysical.Restore(cmd.Context(), rphysical.Options{
		Store: st, Manifest: m, Keys: keys, Dir: dir, TablespaceMap: tsMap, TablespaceOriginal: p.tsOriginal, SkipExternalSymlinks: p.skipLinks, Target: p.target,
		RestoreCommand: restoreCmd, RecoveryFile: cfgPath, RecoveryFileContent: recoveryCfg,
		Owner: owner, PauseAtTarget: p.start, Progress: bar.update, Logger: s.Logger,
	})
	bar.finish()
	if err != nil {
		return err
	}
	out := struct {
		*rphysical.Result
		Reached *rphysical.Reached `json:"reached,omitempty"`
	}{Result: res}
	for _, w := range res.Warnings {
		s.Logger.Warn("restored data directory", "note", w)
	}
	for _, w := range unreadableByServer(s, owner) {
		s.Logger.Warn("restore_command runs as the server's user, which cannot read this: recovery will stop at the first WAL file", "file", w)
	}
	if p.start {
		out.Reached, err = rphysical.Start(cmd.Context(), rphysical.StartOptions{
			Dir: dir, Settings: p.startOptions, Login: login, Owner: owner, Target: p.target,
			PgCtl: pgCtl, Env: serverEnv(),
		})
		if err != nil {
			return err
		}
	}
	if asJSON {
		return writeJSON(stdout, out)
	}
	fmt.Fprintf(stdout, "restored base backup %s into %s: %d files, %s in %.1fs\n", res.ID, res.Dir, res.Files, humanBytes(res.Bytes), res.Seconds)
	if r := out.Reached; r != nil {
		fmt.Fprintf(stdout, "recovery reached LSN %s (last commit %s), timeline %d, promoted: %v\n", r.LSN, r.LastCommitTime, r.Timeline, r.Promoted)
	} else {
		fmt.Fprintf(stdout, "start it with: pg_ctl -D %s start\n", res.Dir)
	}
	return nil
}

// recoveryConfig is the configuration file restore_command reads: the
// repository, the identity, the allowed signers and the storage settings.
// The physical restore writes it, readable by the server's user only.
func recoveryConfig(s *settings) ([]byte, error) {
	repo := s.Repo
	if !strings.Contains(repo, "://") && repo != "" {
		abs, err := filepath.Abs(repo)
		if err != nil {
			return nil, err
		}
		repo = "file://" + abs
	}
	cfg := fileConfig{Repo: repo, LogLevel: "warn", Env: map[string]string{}}
	switch {
	case s.IdentityFile != "":
		data, err := os.ReadFile(s.IdentityFile)
		if err != nil {
			return nil, fmt.Errorf("identity file: %w", err)
		}
		cfg.Identity = string(data)
	case s.Identity != "":
		cfg.Identity = s.Identity
	}
	// restore_command checks the WAL's signatures with the same signers.
	switch {
	case s.AllowedSignersFile != "":
		data, err := os.ReadFile(s.AllowedSignersFile)
		if err != nil {
			return nil, fmt.Errorf("allowed signers: %w", err)
		}
		cfg.AllowedSigners = string(data)
	case s.AllowedSigners != "":
		cfg.AllowedSigners = s.AllowedSigners
	}
	for _, kv := range s.environ() {
		k, v, _ := strings.Cut(kv, "=")
		// What reaches the storage and the programs; not where the
		// backup came from (DRCTL_REPO, keys): the file says that.
		if (knownEnv[k] && (strings.HasPrefix(k, "AWS_") || proxyVar(k)) || strings.HasPrefix(k, "DRCTL_S3_") ||
			k == "DRCTL_SPOOL_DIR" || k == "DRCTL_ZSTD_WORKERS" || k == "DRCTL_PG_BINDIR") && v != "" {
			cfg.Env[k] = v
		}
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	header := "# Written by drctl restore for restore_command; holds the backup identity: delete it after recovery.\n"
	return append([]byte(header), data...), nil
}

var errQuiet = errors.New("")

// unreadableByServer lists the files the recovery configuration names
// (through AWS settings) that the server's user cannot read.
func unreadableByServer(s *settings, owner *rphysical.Owner) []string {
	if owner == nil {
		return nil
	}
	var out []string
	for _, k := range []string{"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		path := s.getenv(k)
		if path == "" {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		readable := mode&0o004 != 0 || ok && (int(st.Uid) == owner.UID && mode&0o400 != 0 || int(st.Gid) == owner.GID && mode&0o040 != 0)
		if !readable {
			out = append(out, k+"="+path)
		}
	}
	return out
}

// serverEnv is the environment of a restored server: this one without
// drctl's and AWS settings, which would override the recovery
// configuration that restore_command reads.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DRCTL_") && !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return env
}
