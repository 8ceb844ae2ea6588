package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/engine/daemon"
	"github.com/drctl/drctl/engine/schedule"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/policy"
	"github.com/drctl/drctl/storage"
)

// exitObjectives: an objective does not hold, a drill failed, a gate
// refused (the checks ran; the answer is no).
const exitObjectives = 4

// loadProcesses reads the processes of the configuration file, and the
// daemon's jobs to check them against.
func loadProcesses(g *globalFlags) (string, []policy.Process, *daemon.Config, []string, error) {
	path := first(g.configFile, os.Getenv("DRCTL_CONFIG"))
	if path == "" {
		return "", nil, nil, nil, &exitCodeError{2, errors.New("give the configuration file with the processes: --config or DRCTL_CONFIG")}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return path, nil, nil, nil, fmt.Errorf("config: %w", err)
	}
	procs, problems := policy.ParseProcesses(data)
	cfg, derr := daemon.ParseConfig(path, data)
	var ce *daemon.ConfigError
	if errors.As(derr, &ce) {
		problems = append(problems, ce.Problems...)
	}
	return path, procs, cfg, byLine(problems), nil
}

// usableProcesses reads the processes for check, drill, gate and report:
// a problem in them is bad usage (the daemon's jobs are not their
// business; policy lint reports both).
func usableProcesses(g *globalFlags) ([]policy.Process, error) {
	path := first(g.configFile, os.Getenv("DRCTL_CONFIG"))
	if path == "" {
		return nil, &exitCodeError{2, errors.New("give the configuration file with the processes: --config or DRCTL_CONFIG")}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	procs, problems := policy.ParseProcesses(data)
	if len(problems) > 0 {
		return nil, &exitCodeError{2, fmt.Errorf("the processes have problems (drctl policy lint): %s", problems[0])}
	}
	return procs, nil
}

// lintAgainstJobs finds objectives the configured jobs cannot reach.
func lintAgainstJobs(procs []policy.Process, cfg *daemon.Config) []string {
	if cfg == nil || len(cfg.Jobs) == 0 {
		return nil
	}
	var problems []string
	receiving := false
	for _, j := range cfg.Jobs {
		receiving = receiving || j.Type == daemon.TypeWALReceive
	}
	for _, p := range procs {
		kind := daemon.TypeBackup
		if p.Mode == policy.ModePITR {
			kind = daemon.TypeBaseBackup
		}
		var jobs []daemon.Job
		for _, j := range cfg.Jobs {
			if j.Type == kind && j.Labels["process"] == p.Name {
				jobs = append(jobs, j)
			}
		}
		if len(jobs) == 0 {
			problems = append(problems, fmt.Sprintf("line %d: process %q: no %s job labelled process=%s: nothing keeps its objectives", p.Line, p.Name, kind, p.Name))
			continue
		}
		if p.Mode == policy.ModeLogical {
			best := jobs[0]
			for _, j := range jobs[1:] {
				if j.Schedule.Period(time.Now()) < best.Schedule.Period(time.Now()) {
					best = j
				}
			}
			if period := best.Schedule.Period(time.Now()); p.RPO < period+best.Jitter {
				problems = append(problems, fmt.Sprintf("line %d: process %q: rpo %s is shorter than job %q can reach (a dump every %s, plus up to %s of jitter)",
					p.Line, p.Name, p.RPO, best.Name, period, best.Jitter))
			}
		}
		if p.Mode == policy.ModeLogical {
			// Only verified dumps count: the verify job's period adds.
			for _, j := range cfg.Jobs {
				if j.Type == daemon.TypeVerify && j.Schedule != nil {
					if period := j.Schedule.Period(time.Now()); p.RPO < period {
						problems = append(problems, fmt.Sprintf("line %d: process %q: rpo %s is shorter than verify job %q's period %s: only verified dumps count",
							p.Line, p.Name, p.RPO, j.Name, period))
					}
				}
			}
		}
		drilled := false
		for _, j := range cfg.Jobs {
			if j.Type != daemon.TypeDrill || j.Process != p.Name {
				continue
			}
			drilled = true
			if period := j.Schedule.Period(time.Now()); period > p.DrillMax {
				problems = append(problems, fmt.Sprintf("line %d: process %q: drill job %q runs every %s, less often than drill max_age %s", p.Line, p.Name, j.Name, period, p.DrillMax))
			}
			if j.Timeout < p.DrillTimeout {
				problems = append(problems, fmt.Sprintf("line %d: job %q: timeout %s is shorter than process %q's drill timeout %s: the daemon would stop the drill first", j.Line, j.Name, j.Timeout, p.Name, p.DrillTimeout))
			}
		}
		if !drilled {
			problems = append(problems, fmt.Sprintf("line %d: process %q: no drill job drills it (type: drill, drill: {process: %s}): its drill objective fails after %s", p.Line, p.Name, p.Name, p.DrillMax))
		}
		if p.Mode == policy.ModePITR && p.RPO < time.Minute && !receiving {
			problems = append(problems, fmt.Sprintf("line %d: process %q: rpo %s needs a wal-receive job: archive_command stores a segment only when it is full or archive_timeout passes", p.Line, p.Name, p.RPO))
		}
	}
	return problems
}

func pickProcesses(procs []policy.Process, names []string) ([]policy.Process, error) {
	if len(names) == 0 {
		if len(procs) == 0 {
			return nil, &exitCodeError{2, errors.New("the configuration defines no processes")}
		}
		return procs, nil
	}
	var out []policy.Process
	for _, n := range names {
		if slices.ContainsFunc(out, func(p policy.Process) bool { return p.Name == n }) {
			continue // named twice: judged (and backed up) once
		}
		i := slices.IndexFunc(procs, func(p policy.Process) bool { return p.Name == n })
		if i < 0 {
			var known []string
			for _, p := range procs {
				known = append(known, p.Name)
			}
			return nil, &exitCodeError{2, fmt.Errorf("no process %q in the configuration (processes: %s)", n, strings.Join(known, ", "))}
		}
		out = append(out, procs[i])
	}
	return out, nil
}

func newPolicyCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Recovery objectives per business process: lint the configuration, check the evidence"}
	lint := &cobra.Command{
		Use:   "lint",
		Short: "Check the processes: unknown keys, bad durations, objectives the configured jobs cannot reach (exit 2)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, procs, cfg, problems, err := loadProcesses(g)
			if err != nil {
				return err
			}
			problems = byLine(append(problems, lintAgainstJobs(procs, cfg)...))
			if len(problems) == 0 && len(procs) == 0 {
				problems = []string{"no processes: defined"}
			}
			for _, p := range problems {
				fmt.Fprintf(stderr, "%s: %s\n", path, p)
			}
			if len(problems) > 0 {
				return &exitCodeError{2, fmt.Errorf("%s: %d problem(s)", path, len(problems))}
			}
			for _, p := range procs {
				fmt.Fprintf(stdout, "%s: %s, rpo %s, rto %s, drill every %s, %d checks\n", p.Name, p.Mode, p.RPO, p.RTO, p.DrillMax, len(p.Checks))
			}
			return nil
		},
	}
	var names []string
	var asJSON bool
	check := &cobra.Command{
		Use:   "check [--process P ...]",
		Short: "Judge each process's objectives (rpo, drill, rto) from the repository's records; exit 4 when one fails",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			procs, err := usableProcesses(g)
			if err != nil {
				return err
			}
			chosen, err := pickProcesses(procs, names)
			if err != nil {
				return err
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			results, err := evaluate(cmd.Context(), s, st, chosen, time.Now())
			if err != nil {
				return err
			}
			if err := printResults(stdout, results, asJSON); err != nil {
				return err
			}
			if !allMet(results) {
				return &exitCodeError{exitObjectives, errors.New(failedSummary(results))}
			}
			return nil
		},
	}
	check.Flags().StringArrayVar(&names, "process", nil, "only this process (repeatable)")
	check.Flags().BoolVar(&asJSON, "json", false, "print the results as a JSON array")
	cmd.AddCommand(lint, check)
	return cmd
}

// readEvidence reads what the objectives are judged on, with the allowed
// signers and (when configured) the identity for timeline history.
func readEvidence(ctx context.Context, s *settings, st storage.Store) (*policy.Evidence, error) {
	verifier, err := s.verifier()
	if err != nil {
		return nil, err
	}
	keys, err := s.decryptKeys()
	if err != nil {
		return nil, err
	}
	return policy.ReadEvidence(ctx, st, verifier, keys)
}

func evaluate(ctx context.Context, s *settings, st storage.Store, procs []policy.Process, now time.Time) ([]policy.Result, error) {
	ev, err := readEvidence(ctx, s, st)
	if err != nil {
		return nil, err
	}
	var out []policy.Result
	for _, p := range procs {
		drills, err := ev.Drills(p)
		if err != nil {
			return nil, err
		}
		out = append(out, policy.Evaluate(p, ev, drills, now)...)
	}
	for _, sk := range ev.Skipped {
		s.Logger.Warn("a record was left out of the judgement", "record", oneLine(sk))
	}
	return out, nil
}

// storeEvidence stores a drill or gate record with the signing key, if
// any, even after an interrupt (the drill or decision happened).
func storeEvidence(ctx context.Context, s *settings, put func(context.Context, catalog.Signer) error) error {
	signer, err := s.signer()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return put(pctx, signer)
}

func allMet(rs []policy.Result) bool {
	for _, r := range rs {
		if !r.Met {
			return false
		}
	}
	return true
}

func failedSummary(rs []policy.Result) string {
	var failed []string
	for _, r := range rs {
		if !r.Met {
			failed = append(failed, r.Process+" "+r.Objective)
		}
	}
	return "objectives not met: " + strings.Join(failed, ", ")
}

func printResults(w io.Writer, rs []policy.Result, asJSON bool) error {
	if asJSON {
		if rs == nil {
			rs = []policy.Result{}
		}
		return writeJSON(w, rs)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tOBJECTIVE\tTARGET\tACHIEVED\tMET\tREASON")
	for _, r := range rs {
		achieved := "-"
		if r.Achieved >= 0 {
			achieved = seconds(r.Achieved).String()
		}
		met := "no"
		if r.Met {
			met = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Process, r.Objective, seconds(r.Target), achieved, met, oneLine(r.Reason))
	}
	return tw.Flush()
}

func seconds(f float64) time.Duration {
	d := time.Duration(f * float64(time.Second))
	if d >= time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

func newDrillCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var name, sandbox, kubeconfig string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "drill --process P",
		Short: "Restore a process's newest backup into a throw-away sandbox, run its checks, time it, record it; exit 4 when it fails",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			procs, err := usableProcesses(g)
			if err != nil {
				return err
			}
			chosen, err := pickProcesses(procs, []string{name})
			if err != nil {
				return err
			}
			p := chosen[0]
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			ev, err := readEvidence(cmd.Context(), s, st)
			if err != nil {
				return err
			}
			b := ev.NewestBackup(p)
			if b == nil {
				what := "verified dump of " + p.Database
				if p.Mode == policy.ModePITR {
					what = "base backup"
				}
				return &exitCodeError{exitObjectives, fmt.Errorf("process %s: no %s labelled process=%s to drill", p.Name, what, p.Name)}
			}
			var sb drill.Sandbox
			switch kind := first(sandbox, s.drill.Sandbox, "local"); kind {
			case "local":
				if sb, err = drill.NewLocal(drill.LocalOptions{BinDir: s.getenv("DRCTL_PG_BINDIR")}); err != nil {
					return err
				}
			case "kubernetes":
				if sb, err = s.kubernetesSandbox(kubeconfig); err != nil {
					return err
				}
			default:
				return &exitCodeError{2, fmt.Errorf("--sandbox %s: want local or kubernetes", kind)}
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			rec := drill.Run(cmd.Context(), drill.Options{Process: p, Backup: b, Sandbox: sb, Host: host, Logger: s.Logger,
				Restorer: selfCmd{exe: exe, args: childArgs(g, first(g.configFile, os.Getenv("DRCTL_CONFIG"))), env: withoutLibpq(s.environ()), waitDelay: 10 * time.Second}})
			if cmd.Context().Err() != nil {
				return fmt.Errorf("drill of %s stopped: %w (its sandbox is removed)", p.Name, cmd.Context().Err())
			}
			if err := storeEvidence(cmd.Context(), s, func(ctx context.Context, signer catalog.Signer) error {
				return catalog.PutDrill(ctx, st, rec, signer)
			}); err != nil {
				return fmt.Errorf("store the drill's record: %w", err)
			}
			if asJSON {
				if err := writeJSON(stdout, rec); err != nil {
					return err
				}
			} else {
				printDrill(stdout, rec)
			}
			if !rec.Passed {
				return &exitCodeError{exitObjectives, fmt.Errorf("drill of %s failed: %s", p.Name, rec.Error)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "process", "", "the process to drill (required)")
	cmd.Flags().StringVar(&sandbox, "sandbox", "", "where to restore: local (a throw-away cluster here) or kubernetes (a scratch namespace, with drctl-kube; see drill.kubernetes in the config file); default: the config file's drill.sandbox, else local")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for the kubernetes sandbox (default: drill.kubernetes.kubeconfig, in-cluster, $KUBECONFIG, ~/.kube/config)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the drill's record as JSON")
	cmd.MarkFlagRequired("process")
	return cmd
}

func printDrill(w io.Writer, d catalog.Drill) {
	verdict := "passed"
	if !d.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "drill %s of %s (%s backup %s): %s in %s\n", d.DrillID, d.Process, d.Mode, oneLine(d.BackupID), verdict, seconds(d.Seconds))
	for _, ph := range d.Phases {
		fmt.Fprintf(w, "  %-8s %s\n", ph.Name, seconds(ph.Seconds))
	}
	if !d.RecoveryPoint.IsZero() {
		fmt.Fprintf(w, "  recovery point %s\n", d.RecoveryPoint.Format(time.RFC3339))
	}
	for _, c := range d.Checks {
		mark := "ok  "
		if !c.Passed {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: expected %s, saw %s\n", mark, oneLine(c.Name), oneLine(c.Expect), oneLine(c.Saw))
	}
	if d.Error != "" {
		fmt.Fprintf(w, "  %s\n", oneLine(d.Error))
	}
}

// withoutLibpq drops libpq's variables (PGSERVICE, PGHOSTADDR and the
// rest would steer a restore meant for the sandbox to another server).
func withoutLibpq(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
}

func newGateCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		names             []string
		release           string
		backupNow, asJSON bool
		walWait, timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gate --process P [--process Q ...] [--release R] [--backup-now]",
		Short: "The pre-deploy confirmation: (a fresh recovery point, then) the objectives; exit 0 to go, 4 to stop",
		Long: "Confirms before a release that the processes can be recovered within their objectives. With\n" +
			"--backup-now it first makes a recovery point: a verified dump labelled process=P,release=R for a\n" +
			"logical process, a named restore point drctl-before-R (archived) for a pitr one; then it checks\n" +
			"every objective (as drctl policy check). The decision is recorded in the repository. Exit 0:\n" +
			"go; 4: stop, with the reasons; 1: it could not decide.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if backupNow && release == "" {
				return &exitCodeError{2, errors.New("--backup-now needs --release R: the recovery point is named after it")}
			}
			if release != "" && !validRelease(release) {
				return &exitCodeError{2, fmt.Errorf("--release %q: letters, digits, dots, dashes and underscores, at most %d", release, maxRelease)}
			}
			procs, err := usableProcesses(g)
			if err != nil {
				return err
			}
			if len(names) == 0 {
				return &exitCodeError{2, errors.New("gate needs --process P (repeatable)")}
			}
			chosen, err := pickProcesses(procs, names)
			if err != nil {
				return err
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			gate := catalog.Gate{GateID: catalog.NewRecordID(), Release: release, Host: host, Reasons: []string{}}
			for _, p := range chosen {
				gate.Processes = append(gate.Processes, p.Name)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var results []policy.Result
			var made error
			if backupNow {
				made = recoveryPointNow(ctx, g, s, st, chosen, release, walWait, &gate)
			}
			gate.Time = time.Now().UTC()
			if made == nil {
				if results, err = evaluate(ctx, s, st, chosen, gate.Time); err != nil {
					return err
				}
			} else {
				// No fresh recovery point: a stop, recorded, with why.
				gate.Reasons = append(gate.Reasons, "recovery point not made: "+oneLine(made.Error()))
			}
			gate.Passed = made == nil && allMet(results)
			for _, r := range results {
				if !r.Met {
					gate.Reasons = append(gate.Reasons, fmt.Sprintf("%s %s: %s", r.Process, r.Objective, oneLine(r.Reason)))
				}
			}
			if err := storeEvidence(cmd.Context(), s, func(ctx context.Context, signer catalog.Signer) error {
				return catalog.PutGate(ctx, st, gate, signer)
			}); err != nil {
				return fmt.Errorf("record the gate's decision: %w", err)
			}
			if asJSON {
				out := struct {
					catalog.Gate
					Objectives []policy.Result `json:"objectives"`
				}{gate, results}
				if err := writeJSON(stdout, out); err != nil {
					return err
				}
			} else {
				verdict := "GO"
				if !gate.Passed {
					verdict = "STOP"
				}
				fmt.Fprintf(stdout, "gate %s: %s for %s\n", first(release, gate.GateID), verdict, strings.Join(gate.Processes, ", "))
				for _, p := range chosen {
					if id := gate.BackupIDs[p.Name]; id != "" {
						fmt.Fprintf(stdout, "  %s: verified dump %s\n", p.Name, id)
					}
					if rp, ok := gate.RestorePoints[p.Name]; ok {
						fmt.Fprintf(stdout, "  %s: restore point %s at %s (timeline %d) archived\n", p.Name, rp.Name, rp.LSN, rp.Timeline)
					}
				}
				for _, r := range gate.Reasons {
					if strings.HasPrefix(r, "recovery point not made") {
						fmt.Fprintf(stdout, "  %s\n", r)
					}
				}
				if err := printResults(stdout, results, false); err != nil {
					return err
				}
			}
			if !gate.Passed {
				return &exitCodeError{exitObjectives, fmt.Errorf("gate: stop: %s", strings.Join(gate.Reasons, "; "))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&names, "process", nil, "a process the release touches (repeatable; required)")
	f.StringVar(&release, "release", "", "the release's name, recorded with the decision and naming the recovery point")
	f.BoolVar(&backupNow, "backup-now", false, "make a fresh recovery point first (a verified dump, or an archived restore point)")
	f.DurationVar(&walWait, "wal-wait", 2*time.Minute, "with --backup-now: how long to wait for the restore point's WAL to be archived")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "how long the whole gate may take (a stop when the recovery point is not made in time)")
	f.BoolVar(&asJSON, "json", false, "print the decision and every objective as JSON")
	return cmd
}

func validRelease(r string) bool {
	if r == "" || len(r) > maxRelease {
		return false
	}
	for _, c := range r {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// maxRelease keeps a restore point's name within PostgreSQL's 63 bytes.
const maxRelease = 40

// restorePointName is the named restore point a gate makes for release:
// the gate's id makes it unique (recovery to a name stops at its first
// occurrence, and a gate may run again for one release).
func restorePointName(release, gateID string) string {
	return "drctl-before-" + release + "-" + gateID[:8]
}

// recoveryPointNow makes the gate's fresh recovery points: a dump,
// verified, per logical process; an archived restore point per pitr one.
func recoveryPointNow(ctx context.Context, g *globalFlags, s *settings, st storage.Store, procs []policy.Process, release string, walWait time.Duration, gate *catalog.Gate) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	self := selfCmd{exe: exe, args: childArgs(g, first(g.configFile, os.Getenv("DRCTL_CONFIG"))), env: s.environ(), waitDelay: 10 * time.Second}
	base, err := s.parseDSN(s.DSN)
	if err != nil {
		return err
	}
	for _, p := range procs {
		switch p.Mode {
		case policy.ModeLogical:
			out, err := self.run(ctx, []string{"DRCTL_DSN=" + base.WithDatabase(p.Database).ConnString()},
				"backup", "--json", "--label", "process="+p.Name, "--label", "release="+release)
			if err != nil {
				return fmt.Errorf("dump of %s: %w", p.Database, err)
			}
			var sum backupSummary
			if err := json.Unmarshal(out, &sum); err != nil || sum.ID == "" {
				return fmt.Errorf("dump of %s: unreadable result", p.Database)
			}
			if _, err := self.run(ctx, nil, "verify", sum.ID); err != nil {
				return fmt.Errorf("verify the dump %s: %w", sum.ID, err)
			}
			if gate.BackupIDs == nil {
				gate.BackupIDs = map[string]string{}
			}
			gate.BackupIDs[p.Name] = sum.ID
		case policy.ModePITR:
			point, seg, err := createRestorePoint(ctx, base.WithDatabase(p.Database).ConnString(), restorePointName(release, gate.GateID))
			if err != nil {
				return fmt.Errorf("restore point for %s: %s", p.Name, base.RedactError(err))
			}
			if err := waitArchived(ctx, st, seg, walWait); err != nil {
				return fmt.Errorf("restore point %s of %s: %w", point.Name, p.Name, err)
			}
			if gate.RestorePoints == nil {
				gate.RestorePoints = map[string]catalog.RestorePoint{}
			}
			gate.RestorePoints[p.Name] = point
		}
	}
	return nil
}

// createRestorePoint makes a named restore point and closes its WAL
// segment, so that archiving takes it at once; it returns the point and
// the segment that holds it.
func createRestorePoint(ctx context.Context, dsn, name string) (catalog.RestorePoint, string, error) {
	point := catalog.RestorePoint{Name: name}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return point, "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var seg string
	err = conn.QueryRow(cctx, `SELECT l::text, pg_catalog.pg_walfile_name(l) FROM pg_catalog.pg_create_restore_point($1) AS l`, name).Scan(&point.LSN, &seg)
	if err != nil {
		return point, "", err
	}
	tl, err := strconv.ParseUint(seg[:8], 16, 32)
	if err != nil {
		return point, "", fmt.Errorf("WAL file name %q", seg)
	}
	point.Timeline = uint32(tl)
	if _, err := conn.Exec(cctx, "SELECT pg_catalog.pg_switch_wal()"); err != nil {
		return point, "", err
	}
	return point, seg, nil
}

// waitArchived waits until the WAL segment is in the repository.
func waitArchived(ctx context.Context, st storage.Store, seg string, limit time.Duration) error {
	a := &wal.Archive{Store: st}
	deadline := time.Now().Add(limit)
	for {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		entries, err := a.Lookup(lctx, seg)
		cancel()
		for _, e := range entries {
			if !e.Partial {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("its WAL segment %s could not be looked up within %s: %w", seg, limit, err)
			}
			return fmt.Errorf("its WAL segment %s was not archived within %s (is archive_command or wal-receive running?)", seg, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// beforeRelease resolves restore --before-release R from the newest gate
// of release R that made a recovery point: for --into its dump (of
// database, when it made several); for --to the newest base backup of the
// process that ended before the restore point, recovered to the point's
// LSN on its timeline (target reports them).
func beforeRelease(ctx context.Context, st storage.Store, v catalog.Verifier, release, database string, physical bool) (id string, target *catalog.RestorePoint, err error) {
	gates, skipped, err := catalog.ListGates(ctx, st, time.Time{}, time.Time{}, v)
	if err != nil {
		return "", nil, err
	}
	var gate *catalog.Gate
	for i := len(gates) - 1; i >= 0; i-- {
		if gates[i].Release == release && (len(gates[i].BackupIDs) > 0 || len(gates[i].RestorePoints) > 0) {
			gate = &gates[i]
			break
		}
	}
	if gate == nil {
		more := ""
		if len(skipped) > 0 {
			more = fmt.Sprintf(" (%d gate records were left out: unreadable or not signed by an allowed signer)", len(skipped))
		}
		return "", nil, fmt.Errorf("no gate made a recovery point for release %q%s (drctl gate --release %s --backup-now)", release, more, release)
	}
	if !physical {
		var ids []string
		for _, id := range gate.BackupIDs {
			m, err := catalog.Load(ctx, st, id, v)
			if err != nil {
				return "", nil, err
			}
			if database == "" || m.Database == database {
				ids = append(ids, id)
			}
		}
		switch len(ids) {
		case 0:
			what := ""
			if database != "" {
				what = " of " + database
			}
			return "", nil, fmt.Errorf("the gate of release %s made no dump%s (its restore points restore with --to)", release, what)
		case 1:
			return ids[0], nil, nil
		}
		return "", nil, &exitCodeError{2, fmt.Errorf("the gate of release %s made dumps of several databases: give --database", release)}
	}
	if len(gate.RestorePoints) != 1 {
		if len(gate.RestorePoints) == 0 {
			return "", nil, fmt.Errorf("the gate of release %s made no restore point (its dumps restore with --into)", release)
		}
		return "", nil, fmt.Errorf("the gate of release %s made restore points in several processes: restore with --target-lsn from its record (drctl gate --json)", release)
	}
	var process string
	var point catalog.RestorePoint
	for p, rp := range gate.RestorePoints {
		process, point = p, rp
	}
	at, err := wal.ParseLSN(point.LSN)
	if err != nil {
		return "", nil, fmt.Errorf("the gate of release %s recorded an unreadable LSN %q", release, point.LSN)
	}
	all, err := catalog.List(ctx, st, v)
	if err != nil {
		return "", nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		m := all[i]
		if m.Kind != catalog.KindPhysical || m.Physical == nil || m.Labels["process"] != process || m.Physical.StopTimeline > point.Timeline {
			continue
		}
		if stop, err := wal.ParseLSN(m.Physical.StopLSN); err == nil && stop <= at {
			return m.ID, &point, nil
		}
	}
	return "", nil, fmt.Errorf("no base backup of %s (labelled process=%s) ended before the restore point of release %s at %s", process, process, release, point.LSN)
}

func newReportCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var htmlFile, since string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "report --html FILE [--since 30d] [--json]",
		Short: "The recovery objectives over a period: one self-contained HTML page, or JSON",
		Long: "Per process, the RPO and RTO targets against what the repository's records show over the\n" +
			"period (the data that could have been lost, each drill's measured restore time), the drill\n" +
			"history and the release gates' decisions. The page has its charts inline (SVG) and fetches\n" +
			"nothing: it can be mailed or archived as it is.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if htmlFile == "" && !asJSON {
				return &exitCodeError{2, errors.New("report needs --html FILE, --json, or both")}
			}
			period, err := schedule.ParseDuration(since)
			if err != nil || period <= 0 {
				return &exitCodeError{2, fmt.Errorf("--since %q: a duration such as 30d or 12h", since)}
			}
			procs, err := usableProcesses(g)
			if err != nil {
				return err
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			verifier, err := s.verifier()
			if err != nil {
				return err
			}
			now := time.Now()
			keys, err := s.decryptKeys()
			if err != nil {
				return err
			}
			r, err := policy.BuildReport(cmd.Context(), st, procs, now.Add(-period), now, verifier, keys)
			if err != nil {
				return err
			}
			if htmlFile != "" {
				var page bytes.Buffer
				if err := r.WriteHTML(&page); err != nil {
					return err
				}
				// Whole or not at all: a half-written page would be read.
				f, err := os.CreateTemp(filepath.Dir(htmlFile), ".drctl-report-*")
				if err != nil {
					return fmt.Errorf("report: %w", err)
				}
				_, err = f.Write(page.Bytes())
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = os.Rename(f.Name(), htmlFile)
				}
				if err != nil {
					os.Remove(f.Name())
					return fmt.Errorf("report: %w", err)
				}
			}
			if asJSON {
				return writeJSON(stdout, r)
			}
			fmt.Fprintf(stdout, "report of %d processes since %s written to %s\n", len(r.Processes), r.Since.Format("2006-01-02"), htmlFile)
			return nil
		},
	}
	cmd.Flags().StringVar(&htmlFile, "html", "", "write the page to this file")
	cmd.Flags().StringVar(&since, "since", "30d", "the period: how far back")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
