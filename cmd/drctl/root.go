package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/policy"
	rlogical "github.com/drctl/drctl/restore/logical"
	"github.com/drctl/drctl/restore/verify"
	"github.com/drctl/drctl/storage"
)

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "drctl",
		Short:         "PostgreSQL backup and disaster recovery",
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	g.register(root)
	root.AddCommand(
		newBackupCommand(g, stdout, stderr),
		newListCommand(g, stdout, stderr),
		newShowCommand(g, stdout, stderr),
		newVerifyCommand(g, stdout, stderr),
		newRestoreCommand(g, stdout, stderr),
		newBaseBackupCommand(g, stdout, stderr),
		newWALPushCommand(g, stdout, stderr),
		newWALFetchCommand(g, stdout, stderr),
		newWALPrefetchCommand(g, stderr),
		newWALReceiveCommand(g, stderr),
		newPruneCommand(g, stdout, stderr),
		newSignCommand(g, stdout, stderr),
		newDaemonCommand(g, stdout, stderr),
		newPolicyCommand(g, stdout, stderr),
		newDrillCommand(g, stdout, stderr),
		newGateCommand(g, stdout, stderr),
		newReportCommand(g, stdout, stderr),
	)
	// Bad usage exits 2; for wal-fetch, 126: restore_command must not take
	// a mistyped command for "not archived" and end recovery early.
	usage := func(code int) func(*cobra.Command, error) error {
		return func(_ *cobra.Command, err error) error { return &exitCodeError{code, err} }
	}
	root.SetFlagErrorFunc(usage(2))
	for _, c := range root.Commands() {
		code := 2
		if c.Name() == "wal-fetch" {
			code = walFetchErrorExit
		}
		c.SetFlagErrorFunc(usage(code))
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					return &exitCodeError{code, err}
				}
				return nil
			}
		}
	}
	return root
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newBackupCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		bf        backupFlags
		zstdLevel int
	)
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Take a logical backup (pg_dump) into the repository",
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
			copt, err := w.codecOptions(zstdLevel)
			if err != nil {
				return err
			}
			pgDump, err := w.program("pg_dump")
			if err != nil {
				return err
			}
			m, err := logical.Backup(cmd.Context(), logical.BackupOptions{
				Store: w.store, DSN: w.dsn, Keys: w.keys, AllowUnencrypted: bf.noEncryption,
				Labels: labels, Codec: copt, PgDump: pgDump, Signer: w.signer,
				ToolVersion: version, Logger: w.Logger,
			})
			if err != nil {
				return err
			}
			if bf.asJSON {
				return writeJSON(stdout, summarize(m))
			}
			fmt.Fprintf(stdout, "backup %s of %s: %s dumped, %s stored in %s (%.1fs)\n", m.ID, m.Database,
				humanBytes(m.RawSize()), humanBytes(m.StoredSize()), w.store, m.EndTime.Sub(m.StartTime).Seconds())
			return nil
		},
	}
	bf.register(cmd, g, "database to back up: URL or key=value conninfo (env DRCTL_DSN; default: libpq PG* variables)")
	cmd.Flags().IntVar(&zstdLevel, "zstd-level", 1, "zstd level, 1 (fastest) to 4 (smallest)")
	return cmd
}

func parseLabels(in []string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, l := range in {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", l)
		}
		out[k] = v
	}
	return out, nil
}

// backupSummary is the JSON shape of a backup in list and backup output.
type backupSummary struct {
	ID          string            `json:"id"`
	Kind        string            `json:"kind"`
	Database    string            `json:"database"`
	StartTime   time.Time         `json:"start_time"`
	EndTime     time.Time         `json:"end_time"`
	StoredBytes int64             `json:"stored_bytes"`
	RawBytes    int64             `json:"raw_bytes"`
	Encrypted   bool              `json:"encrypted"`
	Labels      map[string]string `json:"labels"`
	Server      string            `json:"server_version"`
	// Physical backups: the WAL they need and the window they restore to.
	Physical *catalog.Physical `json:"physical,omitempty"`
	Window   *restoreWindow    `json:"window,omitempty"`
	// Drill is the newest restore drill of the backup (in the last 90
	// days), if any.
	Drill *drillSummary `json:"drill,omitempty"`
}

// drillSummary is a backup's newest drill, in list and show.
type drillSummary struct {
	DrillID string    `json:"drill_id"`
	Process string    `json:"process"`
	Time    time.Time `json:"time"`
	Passed  bool      `json:"passed"`
	Seconds float64   `json:"seconds"`
	Error   string    `json:"error,omitempty"`
}

func summarizeDrill(d catalog.Drill, ok bool) *drillSummary {
	if !ok {
		return nil
	}
	return &drillSummary{DrillID: d.DrillID, Process: d.Process, Time: d.End, Passed: d.Passed, Seconds: d.Seconds, Error: d.Error}
}

// drillHistory is how far back list and show look for drills.
const drillHistory = 90 * 24 * time.Hour

func (d *drillSummary) String() string {
	if d == nil {
		return "-"
	}
	verdict := "passed"
	if !d.Passed {
		verdict = "FAILED"
	}
	return d.Time.Format("2006-01-02") + " " + verdict
}

// restoreWindow is the range of WAL positions a base backup can be
// recovered to with the WAL archived now.
type restoreWindow struct {
	FromLSN     string   `json:"from_lsn"`
	ToLSN       string   `json:"to_lsn,omitempty"`
	Restorable  bool     `json:"restorable"`
	Timelines   []uint32 `json:"timelines"`
	Missing     []string `json:"missing_segments,omitempty"`
	LastSegment string   `json:"last_segment,omitempty"`
}

func summarize(m *catalog.Manifest) backupSummary {
	labels := m.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return backupSummary{
		ID: m.ID, Kind: m.Kind, Database: m.Database, StartTime: m.StartTime, EndTime: m.EndTime,
		StoredBytes: m.StoredSize(), RawBytes: m.RawSize(), Encrypted: m.Encryption.Method != "none",
		Labels: labels, Server: m.Server.Version, Physical: m.Physical,
	}
}

func newListCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var q catalog.Query
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the complete backups in the repository, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			switch q.Kind {
			case "", catalog.KindLogical, catalog.KindPhysical:
			default:
				return &exitCodeError{2, fmt.Errorf("--kind %q: want logical or physical", q.Kind)}
			}
			verifier, err := s.verifier()
			if err != nil {
				return err
			}
			all, err := catalog.List(cmd.Context(), st, verifier)
			if err != nil {
				return err
			}
			all = catalog.Select(all, q)
			windows, err := restoreWindows(cmd, s, st, all)
			if err != nil {
				return err
			}
			drills, err := catalog.LastDrills(cmd.Context(), st, time.Now().Add(-drillHistory), verifier)
			if err != nil {
				return err
			}
			if asJSON {
				out := make([]backupSummary, 0, len(all))
				for _, m := range all {
					sum := summarize(m)
					sum.Window = windows[m.ID]
					d, ok := drills[m.ID]
					sum.Drill = summarizeDrill(d, ok)
					out = append(out, sum)
				}
				return writeJSON(stdout, out)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tDATABASE\tSTARTED\tDURATION\tDUMPED\tSTORED\tRESTORES TO\tDRILLED\tLABELS")
			for _, m := range all {
				window := "-"
				if w := windows[m.ID]; w != nil {
					window = w.FromLSN + ".." + w.ToLSN
					if !w.Restorable {
						window = "UNRESTORABLE: WAL missing"
					} else if len(w.Missing) > 0 {
						window += " (gap at " + w.Missing[0] + ")"
					}
				}
				d, ok := drills[m.ID]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Kind, m.Database,
					m.StartTime.Format(time.RFC3339), m.EndTime.Sub(m.StartTime).Round(time.Millisecond),
					humanBytes(m.RawSize()), humanBytes(m.StoredSize()), window, summarizeDrill(d, ok), formatLabels(m.Labels))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().StringVar(&q.Kind, "kind", "", "only backups of this kind: logical or physical")
	cmd.Flags().StringVar(&q.Database, "database", "", "only backups of this database")
	return cmd
}

// restoreWindows computes each base backup's recovery window from the WAL
// archive. Following timelines needs the identity (history files are
// encrypted); without one, each backup's own timeline is used.
func restoreWindows(cmd *cobra.Command, s *settings, st storage.Store, all []*catalog.Manifest) (map[string]*restoreWindow, error) {
	out := map[string]*restoreWindow{}
	var entries []wal.Entry
	var history map[uint32]wal.Switch
	loaded := false
	for _, m := range all {
		if m.Kind != catalog.KindPhysical {
			continue
		}
		if !loaded {
			keys, err := s.decryptKeys()
			if err != nil {
				return nil, err
			}
			if entries, err = (&wal.Archive{Store: st}).List(cmd.Context()); err != nil {
				return nil, err
			}
			if history, err = verify.ReadHistory(cmd.Context(), verify.Options{Store: st, Keys: keys}, entries); err != nil {
				return nil, err
			}
			loaded = true
		}
		chain, err := verify.WALChain(m, entries, history)
		if err != nil {
			return nil, err
		}
		out[m.ID] = &restoreWindow{FromLSN: chain.WindowFrom, ToLSN: chain.WindowTo, Restorable: chain.Restorable,
			Timelines: chain.Timelines, Missing: chain.Missing, LastSegment: chain.LastSegment}
	}
	return out, nil
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func newVerifyCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "verify ID|latest|--all",
		Short: "Re-read stored backups: checksums, decryption, decompression, the dump's table of contents",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) || len(args) > 1 {
				return &exitCodeError{2, fmt.Errorf("verify takes one backup id, latest, or --all")}
			}
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
			// Manifests are read unchecked first, so that each bad signature
			// is reported against its backup (exit 3) and the others are
			// still verified; nothing is read from a refused backup.
			var targets []*catalog.Manifest
			if all {
				if targets, err = catalog.List(cmd.Context(), st, nil); err != nil {
					return err
				}
			} else {
				m, err := catalog.Resolve(cmd.Context(), st, args[0], catalog.Query{})
				if err != nil {
					return err
				}
				targets = append(targets, m)
			}
			// Only a logical backup's check needs pg_restore; a bad
			// DRCTL_PG_BINDIR is reported all the same.
			pgRestore, perr := s.program("pg_restore")
			if perr != nil && s.getenv("DRCTL_PG_BINDIR") != "" {
				return perr
			}
			var reports []*verify.Report
			var firstErr error
			for _, m := range targets {
				rep, err := verify.Backup(cmd.Context(), verify.Options{Store: st, Keys: keys, PgRestore: pgRestore, Verifier: verifier}, m)
				if rep == nil {
					return err
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				reports = append(reports, rep)
				// prune never deletes the newest verified backup.
				if rerr := catalog.RecordVerification(cmd.Context(), st, m.ID, catalog.Verification{Time: time.Now().UTC(), OK: rep.OK}); rerr != nil {
					s.Logger.Warn("could not record the verification", "backup", m.ID, "error", rerr)
				}
				if !asJSON {
					status := "ok"
					if !rep.OK {
						status = "FAILED"
					}
					fmt.Fprintf(stdout, "%s %s\n", m.ID, status)
					fmt.Fprintf(stdout, "  signature: %s\n", rep.Signature)
					for _, e := range rep.WALSignatureErrors {
						fmt.Fprintf(stdout, "  WAL signature: %s\n", e)
					}
					if w := rep.WAL; w != nil {
						if w.OK {
							fmt.Fprintf(stdout, "  WAL: complete on timelines %v up to %s, restores to %s..%s\n", w.Timelines, w.LastSegment, w.WindowFrom, w.WindowTo)
						} else {
							fmt.Fprintf(stdout, "  WAL: %d segments missing: %s\n", len(w.Missing), strings.Join(w.Missing, ", "))
						}
					}
					for _, o := range rep.Objects {
						switch {
						case o.OK && o.Files > 0:
							fmt.Fprintf(stdout, "  %s: ok (%s, %d files match backup_manifest)\n", o.Key, humanBytes(o.Size), o.Files)
						case o.OK && o.TOCEntries > 0:
							fmt.Fprintf(stdout, "  %s: ok (%s, %d table-of-contents entries)\n", o.Key, humanBytes(o.Size), o.TOCEntries)
						case o.OK:
							fmt.Fprintf(stdout, "  %s: ok (%s)\n", o.Key, humanBytes(o.Size))
						default:
							fmt.Fprintf(stdout, "  %s: %s\n", o.Key, o.Error)
						}
					}
				}
			}
			if asJSON {
				var werr error
				if all {
					if reports == nil {
						reports = []*verify.Report{}
					}
					werr = writeJSON(stdout, reports)
				} else {
					werr = writeJSON(stdout, reports[0])
				}
				if werr != nil {
					return werr
				}
			}
			if firstErr != nil {
				return &exitCodeError{3, firstErr}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&all, "all", false, "verify every backup in the repository")
	return cmd
}

func newRestoreCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		into, database string
		asJSON, clean  bool
		phys           physicalRestoreFlags
		lopt           rlogical.Options
		beforeRel      string
	)
	cmd := &cobra.Command{
		Use:   "restore ID|latest|--before-release R (--into DSN | --to DIR)",
		Short: "Restore a logical backup into a database, or a base backup into a data directory",
		Args:  cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			intoSet, toSet := cmd.Flags().Changed("into"), cmd.Flags().Changed("to")
			if intoSet == toSet {
				return &exitCodeError{2, fmt.Errorf("restore needs --into DSN (a logical backup into a database; --into '' uses the PG* variables) or --to DIR (a base backup into a data directory)")}
			}
			if (len(args) == 1) == (beforeRel != "") {
				return &exitCodeError{2, fmt.Errorf("restore needs a backup: ID, latest, or --before-release R (not both)")}
			}
			if beforeRel != "" {
				if toSet && !phys.target.Empty() {
					return &exitCodeError{2, fmt.Errorf("--before-release is the recovery target: no --target-* with it")}
				}
				s, st, err := g.open(cmd, stderr)
				if err != nil {
					return err
				}
				verifier, err := s.verifier()
				if err != nil {
					return err
				}
				id, point, err := beforeRelease(cmd.Context(), st, verifier, beforeRel, database, toSet)
				if err != nil {
					return err
				}
				args = []string{id}
				if point != nil {
					// By LSN and timeline: the point's name may exist twice.
					phys.target.LSN = point.LSN
					phys.target.Timeline = strconv.FormatUint(uint64(point.Timeline), 10)
				}
				database = ""
			}
			if toSet {
				if phys.to == "" {
					return &exitCodeError{2, fmt.Errorf("--to needs a directory")}
				}
				if database != "" {
					return &exitCodeError{2, fmt.Errorf("--database selects a logical backup for --into; a base backup (--to) holds the whole cluster")}
				}
				for _, f := range []string{"no-owner", "no-privileges", "role", "table", "schema", "exclude-table", "exclude-schema", "exclude-extension", "section", "data-only", "disable-triggers"} {
					if cmd.Flags().Changed(f) {
						return &exitCodeError{2, fmt.Errorf("--%s is for a logical restore (--into); a base backup (--to) restores the whole cluster", f)}
					}
				}
				return runPhysicalRestore(cmd, g, &phys, args[0], asJSON, stdout, stderr)
			}
			s, err := g.resolve(cmd, stderr)
			if err != nil {
				return err
			}
			target, err := s.parseDSN(into)
			if err != nil {
				return fmt.Errorf("--into: %w", err)
			}
			if err := lopt.Selection.Check(); err != nil {
				return &exitCodeError{2, err}
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
			m, err := catalog.Resolve(cmd.Context(), st, args[0], catalog.Query{Kind: catalog.KindLogical, Database: database, Verifier: verifier})
			if err != nil {
				return err
			}
			pgRestore, err := s.program("pg_restore")
			if err != nil {
				return err
			}
			bar := newProgressBar(stderr, !asJSON)
			lopt.PgRestore, lopt.Store, lopt.Manifest, lopt.Keys, lopt.Target, lopt.Clean = pgRestore, st, m, keys, target, clean
			lopt.Progress, lopt.Logger = bar.update, s.Logger
			res, err := rlogical.Restore(cmd.Context(), lopt)
			bar.finish()
			if errors.Is(err, rlogical.ErrSelection) {
				return &exitCodeError{2, err}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdout, res)
			}
			for _, w := range res.LeftOut {
				fmt.Fprintf(stderr, "drctl: warning: left out %s\n", w)
			}
			what := humanBytes(res.RawBytes)
			if lopt.Selection.Narrows() || len(lopt.Selection.Sections) > 0 || lopt.Selection.DataOnly {
				what = fmt.Sprintf("%d entries, no table rows", res.Entries)
				if len(res.Tables) > 0 {
					what = fmt.Sprintf("%d entries, the rows of %s", res.Entries, strings.Join(res.Tables, ", "))
				}
			}
			fmt.Fprintf(stdout, "restored %s into database %s: %s in %.1fs\n", res.ID, res.Database, what, res.Seconds)
			return nil
		},
	}
	cmd.Flags().StringVar(&into, "into", "", "database to restore into: URL or key=value conninfo")
	cmd.Flags().StringVar(&beforeRel, "before-release", "", "restore the recovery point drctl gate --backup-now made for this release: its dump (--into), or its restore point (--to)")
	cmd.Flags().StringVar(&database, "database", "", "with latest --into: the newest logical backup of this database (needed when the repository holds several)")
	cmd.Flags().StringVar(&g.dsn, "dsn", "", "with --start: the login role (user, password, dbname) for following recovery; drctl always connects to the server it started, over a private socket (default: the data directory owner's name)")
	phys.register(cmd)
	cmd.Flags().BoolVar(&clean, "clean", false, "restore into a non-empty database, replacing the backup's objects")
	cmd.Flags().BoolVar(&lopt.NoOwner, "no-owner", false, "--into: do not give objects to their owners in the backup: the restoring role owns them (needed as a role that is not a superuser)")
	cmd.Flags().BoolVar(&lopt.NoPrivileges, "no-privileges", false, "--into: restore no GRANT or REVOKE (needed when the backup's roles do not exist on the target)")
	cmd.Flags().StringVar(&lopt.Role, "role", "", "--into: SET ROLE to this role before restoring, so that it owns what it creates")
	cmd.Flags().StringArrayVar(&lopt.Selection.Tables, "table", nil, "--into: only this table (schema.name or name, double-quoted parts as in SQL; repeatable), with its data, indexes, constraints, triggers, owned sequences and what it needs")
	cmd.Flags().StringArrayVar(&lopt.Selection.Schemas, "schema", nil, "--into: the objects of this schema (repeatable; with --table, both are restored)")
	cmd.Flags().StringArrayVar(&lopt.Selection.ExcludeExtensions, "exclude-extension", nil, "--into: leave out this extension and what depends on it (repeatable; for extensions only a superuser may create)")
	cmd.Flags().BoolVar(&lopt.DisableTriggers, "disable-triggers", false, "--into: with --data-only, do not fire triggers while loading (a superuser)")
	cmd.Flags().StringArrayVar(&lopt.Selection.ExcludeTables, "exclude-table", nil, "--into: leave out this table and what depends on it (repeatable)")
	cmd.Flags().StringArrayVar(&lopt.Selection.ExcludeSchemas, "exclude-schema", nil, "--into: leave out this schema and what depends on it (repeatable)")
	cmd.Flags().StringArrayVar(&lopt.Selection.Sections, "section", nil, "--into: only this section: pre-data, data or post-data (repeatable)")
	cmd.Flags().BoolVar(&lopt.Selection.DataOnly, "data-only", false, "--into: table data only, into existing tables")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func newPruneCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		r              policy.Retention
		dryRun, asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "prune --keep-last N --keep-within DURATION",
		Short: "Delete old backups and exactly the WAL no kept backup needs",
		Long: "Delete backups outside the retention rules, and the archived WAL older than the oldest kept\n" +
			"base backup. The newest backup of each kind and the newest verified one are always kept;\n" +
			"with --keep-within, so is the base backup the start of that recovery window needs.\n" +
			"Manifests go first, so an interrupted prune never leaves a backup that looks whole but is not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if r.KeepLast <= 0 && r.KeepWithin <= 0 {
				return &exitCodeError{2, policy.ErrNoRule}
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			verifier, err := s.verifier()
			if err != nil {
				return err
			}
			plan, err := policy.PlanPrune(cmd.Context(), st, r, time.Now(), verifier)
			if err != nil {
				return err
			}
			for _, w := range plan.Warnings {
				s.Logger.Warn("kept what could not be checked", "error", w)
			}
			if !dryRun {
				if err := policy.Prune(cmd.Context(), st, plan); err != nil {
					return err
				}
				s.Logger.Info("pruned", "backups", len(plan.Delete), "wal_files", plan.WALDeleteCount)
			}
			if asJSON {
				return writeJSON(stdout, struct {
					DryRun bool `json:"dry_run"`
					*policy.Plan
				}{dryRun, plan})
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			for _, d := range plan.Delete {
				fmt.Fprintf(stdout, "%s %s backup %s (%s)\n", verb, d.Kind, d.ID, d.Reason)
			}
			for _, d := range plan.Keep {
				fmt.Fprintf(stdout, "keep %s backup %s (%s)\n", d.Kind, d.ID, d.Reason)
			}
			for _, id := range plan.Orphans {
				fmt.Fprintf(stdout, "%s leftovers of unfinished backup %s\n", verb, id)
			}
			for _, id := range plan.Unfinished {
				fmt.Fprintf(stdout, "keep unfinished backup %s (its writer's lease is live or could not be read)\n", id)
			}
			fmt.Fprintf(stdout, "%s %d WAL files (%s) before %s\n", verb, plan.WALDeleteCount, humanBytes(plan.WALDeleteBytes), first(plan.WALKeepFrom, "the oldest kept base backup"))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&r.KeepLast, "keep-last", 0, "keep the newest N backups of each kind")
	f.DurationVar(&r.KeepWithin, "keep-within", 0, "keep backups that ended within this duration (e.g. 168h), and the base backup that window starts from")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan, delete nothing")
	f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	return cmd
}
