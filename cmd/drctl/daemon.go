package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/engine/clock"
	"github.com/drctl/drctl/engine/daemon"
	"github.com/drctl/drctl/policy"
)

func newDaemonCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var (
		listen, logFormat string
		check             bool
		grace             time.Duration
	)
	cmd := &cobra.Command{
		Use:   "daemon --config FILE",
		Short: "Run the configured jobs on their schedules: the sidecar (metrics on /metrics)",
		Long: "Run the jobs of the configuration file (jobs:) on their schedules, one run of a job at a time\n" +
			"across every daemon on the repository, with records of each run in the repository. Serves\n" +
			"/metrics, /healthz and /readyz. SIGHUP reloads the file (a broken one is refused and the old\n" +
			"one kept); SIGTERM stops scheduling, gives running jobs --grace, then cancels them cleanly.\n" +
			"--check validates the file and exits: 0 when it is good, 2 with every problem.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := first(g.configFile, os.Getenv("DRCTL_CONFIG"))
			if path == "" {
				return &exitCodeError{2, errors.New("daemon: give the configuration file with --config or DRCTL_CONFIG")}
			}
			if logFormat != "text" && logFormat != "json" {
				return &exitCodeError{2, fmt.Errorf("--log-format %q: text or json", logFormat)}
			}
			s, cfg, data, err := loadDaemonConfig(g, cmd, path, stderr)
			if check {
				if err != nil {
					var ce *daemon.ConfigError
					if errors.As(err, &ce) {
						for _, p := range ce.Problems {
							fmt.Fprintf(stderr, "%s: %s\n", path, p)
						}
						noun := "problems"
						if len(ce.Problems) == 1 {
							noun = "problem"
						}
						return &exitCodeError{2, fmt.Errorf("%s: %d %s", path, len(ce.Problems), noun)}
					}
					return &exitCodeError{2, err}
				}
				fmt.Fprintf(stdout, "%s: %d jobs, listening on %s\n", path, len(cfg.Jobs), first(listen, cfg.Listen))
				now := time.Now()
				for _, j := range cfg.Jobs {
					if j.Schedule == nil {
						fmt.Fprintf(stdout, "  %-20s %-10s runs always (slot %s)\n", j.Name, j.Type, j.Slot)
						continue
					}
					next := j.Schedule.Next(now)
					fmt.Fprintf(stdout, "  %-20s %-10s %-28q every %s, next %s\n", j.Name, j.Type, j.Schedule.String(),
						j.Schedule.Period(now), next.Local().Format(time.RFC3339))
				}
				return nil
			}
			if err != nil {
				return &exitCodeError{2, err}
			}
			if listen != "" {
				cfg.Listen = listen
			}
			return runDaemon(cmd.Context(), g, s, cfg, data, path, logFormat, grace, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "address for /metrics, /healthz and /readyz (default: the file's listen:, else "+daemon.DefaultListen+")")
	f.BoolVar(&check, "check", false, "validate the configuration and exit: 0 when good, 2 with every problem")
	f.DurationVar(&grace, "grace", 20*time.Second, "at SIGTERM, how long running jobs may finish before they are cancelled")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

// loadDaemonConfig reads the file: the general settings (as every
// command does) and the daemon's keys, every problem with its line. It
// also returns the file's bytes: the jobs run with exactly this version.
func loadDaemonConfig(g *globalFlags, cmd *cobra.Command, path string, stderr io.Writer) (*settings, *daemon.Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("config: %w", err)
	}
	var problems []string
	_, ferr := parseFileConfig(data)
	if err := ferr; err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				problems = append(problems, plainYAMLError(e))
			}
		} else {
			problems = append(problems, plainYAMLError(err.Error()))
		}
	}
	cfg, err := daemon.ParseConfig(path, data)
	var ce *daemon.ConfigError
	if errors.As(err, &ce) {
		problems = append(problems, ce.Problems...)
	} else if err != nil {
		return nil, nil, nil, err
	}
	var s *settings
	if ferr == nil {
		if s, err = g.resolve(cmd, stderr); err != nil {
			problems = append(problems, err.Error())
		}
	}
	procs, pproblems := policy.ParseProcesses(data)
	problems = append(problems, pproblems...)
	if s != nil && cfg != nil {
		problems = append(problems, checkJobs(s, cfg, procs)...)
	}
	if len(problems) > 0 {
		return nil, nil, nil, &daemon.ConfigError{File: path, Problems: byLine(problems)}
	}
	return s, cfg, data, nil
}

// checkJobs finds what would make the jobs fail at every run.
func checkJobs(s *settings, cfg *daemon.Config, procs []policy.Process) []string {
	var problems []string
	if s.Repo == "" {
		problems = append(problems, "repo: no repository (repo:, --repo or DRCTL_REPO)")
	}
	readable := func(what, path string) {
		if f, err := os.Open(path); err != nil {
			problems = append(problems, fmt.Sprintf("%s %s: %v", what, path, errors.Unwrap(err)))
		} else {
			f.Close()
		}
	}
	if s.RecipientsFile != "" {
		readable("recipients_file", s.RecipientsFile)
	}
	if s.IdentityFile != "" {
		readable("identity_file", s.IdentityFile)
	}
	for _, j := range cfg.Jobs {
		switch j.Type {
		case daemon.TypeBackup, daemon.TypeBaseBackup, daemon.TypeWALReceive:
			if s.RecipientsFile == "" {
				problems = append(problems, fmt.Sprintf("line %d: job %q stores backups: give recipients_file (age public keys)", j.Line, j.Name))
			}
			if j.DSN == "" && s.DSN == "" && os.Getenv("PGHOST") == "" && os.Getenv("PGDATABASE") == "" && os.Getenv("PGSERVICE") == "" {
				problems = append(problems, fmt.Sprintf("line %d: job %q has no dsn, and there is no global dsn: nor PG* variables", j.Line, j.Name))
			}
		case daemon.TypeVerify, daemon.TypeDrill:
			if s.IdentityFile == "" && s.Identity == "" && s.RecipientsFile != "" {
				problems = append(problems, fmt.Sprintf("line %d: job %q reads encrypted backups: give identity_file (the age identity)", j.Line, j.Name))
			}
		}
		if j.Type == daemon.TypeDrill && !slices.ContainsFunc(procs, func(p policy.Process) bool { return p.Name == j.Process }) {
			problems = append(problems, fmt.Sprintf("line %d: job %q drills process %q, which processes: does not define", j.Line, j.Name, j.Process))
		}
		if j.DSN != "" {
			if _, err := s.parseDSN(j.DSN); err != nil {
				problems = append(problems, fmt.Sprintf("line %d: job %q: dsn: %v", j.Line, j.Name, err))
			}
		}
	}
	return problems
}

// plainYAMLError says a YAML decoding problem without Go's type names.
func plainYAMLError(e string) string {
	e = strings.TrimPrefix(e, "yaml: ")
	if i := strings.Index(e, " not found in type "); i >= 0 {
		if _, field, ok := strings.Cut(e[:i], "field "); ok {
			prefix, _, _ := strings.Cut(e, "field ")
			return fmt.Sprintf("%sunknown key %q", prefix, field)
		}
	}
	if i := strings.Index(e, " into "); i >= 0 {
		e = e[:i] + " (wrong type)"
	}
	return e
}

// byLine sorts problems by their line number, and drops repeats.
func byLine(in []string) []string {
	line := func(p string) int {
		if rest, ok := strings.CutPrefix(p, "line "); ok {
			n, _ := strconv.Atoi(strings.TrimRight(strings.SplitN(rest, " ", 2)[0], ":"))
			return n
		}
		return 0
	}
	sort.SliceStable(in, func(i, j int) bool { return line(in[i]) < line(in[j]) })
	return slices.Compact(in)
}

func runDaemon(ctx context.Context, g *globalFlags, s *settings, cfg *daemon.Config, data []byte, path, logFormat string, grace time.Duration, stderr io.Writer) error {
	level := slog.LevelInfo
	if s.debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if logFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, opts))
	}
	s.Logger = log
	st, err := s.openStore(ctx)
	if err != nil {
		return err
	}
	verifier, err := s.verifier()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("daemon: find drctl's own program: %w", err)
	}
	host, _ := os.Hostname()
	holder := fmt.Sprintf("%s/%d", first(os.Getenv("POD_NAME"), host), os.Getpid())
	// The jobs read the configuration the daemon validated, not the file
	// as it is now (a ConfigMap changes under a running pod; a broken edit
	// is refused at SIGHUP and must not reach the jobs either).
	snapshots, err := os.MkdirTemp("", "drctl-daemon-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(snapshots)
	runner := &processRunner{exe: exe, env: s.environ(), log: log, dsn: s.DSN}
	if err := runner.snapshot(snapshots, g, data); err != nil {
		return err
	}
	d := daemon.New(cfg, daemon.Options{Store: st, Runner: runner, Clock: clock.Real{}, Logger: log, Holder: holder,
		Grace: grace, Verifier: verifier, ReceiveLag: func(ctx context.Context, j daemon.Job) (int64, error) {
			return receiveLag(ctx, s, j)
		}})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("daemon: listen on %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("daemon started", "jobs", len(cfg.Jobs), "listen", ln.Addr().String(), "repo", st.String(), "holder", holder)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				ns, next, data, err := loadDaemonConfig(g, &cobra.Command{}, path, io.Discard)
				if err == nil {
					err = runner.snapshot(snapshots, g, data)
				}
				if err != nil {
					log.Error("configuration reload refused: the running configuration stays", "error", err)
					continue
				}
				runner.setDSN(ns.DSN)
				if next.Listen != cfg.Listen && next.Listen != daemon.DefaultListen {
					log.Warn("listen: changes take a restart", "listen", cfg.Listen)
				}
				d.Reload(ctx, next)
				log.Info("configuration reloaded", "jobs", len(next.Jobs))
			}
		}
	}()
	janitorDone := make(chan struct{})
	go func() {
		defer close(janitorDone)
		kubeJanitor(ctx, s, cfg, log)
	}()
	err = d.Run(ctx)
	<-reloadDone
	<-janitorDone
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return err
}

// childArgs are the global settings a job's drctl process needs: the
// configuration file, and whatever was given as flags to the daemon.
func childArgs(g *globalFlags, path string) []string {
	args := []string{"--config", path}
	for _, f := range []struct{ name, value string }{{"--repo", g.repo}, {"--recipients-file", g.recipientsFile},
		{"--identity-file", g.identityFile}, {"--log-level", g.logLevel}, {"--signing-key", g.signingKey},
		{"--allowed-signers", g.allowedSigners}} {
		if f.value != "" {
			args = append(args, f.name, f.value)
		}
	}
	return args
}

// processRunner runs each job as a drctl process: a run that crashes or
// leaks takes nothing of the daemon with it, and the commands are the
// ones users run and tests cover.
type processRunner struct {
	exe string
	env []string
	log *slog.Logger
	mu  sync.Mutex
	// args: the global settings with the configuration snapshot in force;
	// dsn: the file's dsn: in force, for jobs without their own.
	args []string
	dsn  string
	n    int
}

// snapshot writes the validated configuration to a private file the jobs
// read from then on.
func (r *processRunner) snapshot(dir string, g *globalFlags, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	path := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", r.n))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("daemon: keep the configuration for the jobs: %w", err)
	}
	r.args = childArgs(g, path)
	return nil
}

func (r *processRunner) setDSN(dsn string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dsn = dsn
}

func (r *processRunner) Run(ctx context.Context, j daemon.Job, runID string) (daemon.Outcome, error) {
	r.mu.Lock()
	args := append([]string(nil), r.args...)
	dsn := first(j.DSN, r.dsn)
	r.mu.Unlock()
	switch j.Type {
	case daemon.TypeBackup, daemon.TypeBaseBackup:
		args = append(args, j.Type, "--json", "--label", "job="+j.Name)
		keys := make([]string, 0, len(j.Labels))
		for k := range j.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, "--label", k+"="+j.Labels[k])
		}
	case daemon.TypeVerify:
		args = append(args, "verify", "--json")
		if j.VerifyAll {
			args = append(args, "--all")
		} else {
			args = append(args, "latest")
		}
	case daemon.TypePrune:
		args = append(args, "prune", "--json")
		if j.KeepLast > 0 {
			args = append(args, "--keep-last", strconv.Itoa(j.KeepLast))
		}
		if j.KeepWithin > 0 {
			args = append(args, "--keep-within", j.KeepWithin.String())
		}
	case daemon.TypeWALReceive:
		args = append(args, "wal-receive", "--slot", j.Slot)
	case daemon.TypeDrill:
		args = append(args, "drill", "--process", j.Process, "--json")
		if j.Sandbox != "" {
			args = append(args, "--sandbox", j.Sandbox)
		}
	case daemon.TypePolicy:
		args = append(args, "policy", "check", "--json")
	default:
		return daemon.Outcome{}, fmt.Errorf("job type %q", j.Type)
	}
	// The DSN goes in the environment: a command line (and its password)
	// is visible to every local user in ps.
	env := []string{"DRCTL_RUN_ID=" + runID, "DRCTL_JOB=" + j.Name}
	if dsn != "" {
		env = append(env, "DRCTL_DSN="+dsn)
	}
	// A cancelled job aborts its uploads and releases its leases within
	// seconds; then it is killed (Kubernetes' 30 s minus the grace).
	out, err := selfCmd{exe: r.exe, env: r.env, waitDelay: 8 * time.Second}.run(ctx, env, args...)
	var o daemon.Outcome
	if exitCode(err) == exitObjectives {
		// A drill that failed, objectives that do not hold: judged, with
		// what was found on stdout.
		switch j.Type {
		case daemon.TypeDrill:
			var rec catalog.Drill
			if json.Unmarshal(out, &rec) == nil && rec.DrillID != "" {
				o.Drill = &daemon.DrillOutcome{Process: rec.Process, Passed: rec.Passed, Seconds: rec.Seconds, End: rec.End}
			}
		case daemon.TypePolicy:
			if json.Unmarshal(out, &o.Objectives) == nil {
				return o, nil
			}
		}
	}
	var ce *childError
	if errors.As(err, &ce) {
		r.log.Debug("the job's output", "job", j.Name, "run_id", runID, "stderr", oneLine(ce.stderr))
		switch code := exitCode(err); {
		case ce.msg != "" && code >= 0:
			return o, fmt.Errorf("%s (exit %d)", ce.msg, code)
		case ce.msg != "":
			return o, fmt.Errorf("%s: %w", ce.msg, ce.err)
		}
		return o, fmt.Errorf("drctl %s: %w", j.Type, ce.err)
	}
	switch j.Type {
	case daemon.TypeDrill:
		var rec catalog.Drill
		if err := json.Unmarshal(out, &rec); err != nil {
			return o, fmt.Errorf("drctl drill: unreadable result: %w", err)
		}
		o.Drill = &daemon.DrillOutcome{Process: rec.Process, Passed: rec.Passed, Seconds: rec.Seconds, End: rec.End}
	case daemon.TypePolicy:
		if err := json.Unmarshal(out, &o.Objectives); err != nil {
			return o, fmt.Errorf("drctl policy check: unreadable result: %w", err)
		}
	case daemon.TypeBackup, daemon.TypeBaseBackup:
		var sum backupSummary
		if err := json.Unmarshal(out, &sum); err != nil {
			return o, fmt.Errorf("drctl %s: unreadable result: %w", j.Type, err)
		}
		o = daemon.Outcome{BackupID: sum.ID, Database: sum.Database, StoredBytes: sum.StoredBytes, RawBytes: sum.RawBytes}
	}
	return o, nil
}

// receiveLag is how far a wal-receive job's slot is behind the server.
func receiveLag(ctx context.Context, s *settings, j daemon.Job) (int64, error) {
	dsn, err := s.parseDSN(first(j.DSN, s.DSN))
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn.ConnString())
	if err != nil {
		return 0, errors.New(dsn.RedactError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var lag *int64
	err = conn.QueryRow(cctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1", j.Slot).Scan(&lag)
	if err != nil {
		return 0, errors.New(dsn.RedactError(err))
	}
	if lag == nil {
		return 0, fmt.Errorf("slot %s has no restart position yet", j.Slot)
	}
	return *lag, nil
}

// janitorEvery is how often a daemon with drills in Kubernetes deletes
// the drill namespaces past their expiry (killed drills leave them).
const janitorEvery = 15 * time.Minute

// kubeJanitor runs drctl-kube janitor now and then while the daemon runs,
// when a drill may go to a Kubernetes namespace.
func kubeJanitor(ctx context.Context, s *settings, cfg *daemon.Config, log *slog.Logger) {
	kube := s.drill.Sandbox == "kubernetes"
	for _, j := range cfg.Jobs {
		kube = kube || j.Sandbox == "kubernetes"
	}
	if !kube {
		return
	}
	helper, err := drill.HelperPath(drill.KubernetesHelper)
	if err != nil {
		log.Warn("drill namespaces: no janitor", "error", err)
		return
	}
	args := []string{"janitor"}
	if sa := s.drill.Kubernetes.ServiceAccount; sa != "" {
		args = append(args, "--service-account", sa)
	}
	if k := s.drill.Kubernetes; k.Kubeconfig != "" {
		args = append(args, "--kubeconfig", k.Kubeconfig)
	}
	if k := s.drill.Kubernetes; k.Context != "" {
		args = append(args, "--context", k.Context)
	}
	for {
		jctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		cmd := exec.CommandContext(jctx, helper, args...)
		cmd.Env = s.helperEnv()
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		cancel()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && err == nil {
				log.Info("drill namespaces: " + line)
			}
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("drill namespaces: the janitor failed", "error", err, "output", oneLine(string(out)))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(janitorEvery):
		}
	}
}
