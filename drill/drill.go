// Package drill runs restore drills: the newest backup of a business
// process restored into a throw-away sandbox, its data checked, the
// restore timed by phase, the sandbox destroyed whatever happens, and a
// record kept in the repository as evidence for the recovery objectives.
package drill

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/policy"
)

// Restorer restores a backup into a sandbox: cmd runs drctl restore.
type Restorer interface {
	// Logical restores a dump into the database the PG* variables of env
	// name (created when missing).
	Logical(ctx context.Context, backupID string, env []string) error
	// Physical writes a base backup into dataDir with recovery settings
	// that replay the archive to its end, then promote.
	Physical(ctx context.Context, backupID, dataDir string) error
}

// Options run one drill.
type Options struct {
	Process  policy.Process
	Backup   *catalog.Manifest
	Sandbox  Sandbox
	Restorer Restorer
	Now      func() time.Time
	Host     string
	Logger   *slog.Logger
}

// Run drills: restore, replay (pitr), check. The returned record says what
// happened, failures included; the error is only for a drill that could
// not be judged at all. The sandbox is closed before Run returns.
func Run(ctx context.Context, opt Options) catalog.Drill {
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p, b := opt.Process, opt.Backup
	rec := catalog.Drill{Process: p.Name, DrillID: catalog.NewRecordID(), Mode: p.Mode, BackupID: b.ID, RawBytes: b.RawSize(),
		Start: now().UTC(), Sandbox: opt.Sandbox.Kind(), Host: opt.Host}
	defer func() {
		if err := opt.Sandbox.Close(ctx); err != nil {
			log.Warn("could not remove the drill's sandbox", "error", err)
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, p.DrillTimeout)
	defer cancel()
	phase := func(name string, f func() error) error {
		t := now()
		err := f()
		rec.Phases = append(rec.Phases, catalog.DrillPhase{Name: name, Seconds: now().Sub(t).Seconds()})
		if err != nil && dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			why := ""
			if _, at, ok := strings.Cut(err.Error(), "; the sandbox was at: "); ok {
				why = " (the sandbox was at: " + at + ")"
			}
			err = fmt.Errorf("%s: stopped by the drill timeout of %s%s", name, p.DrillTimeout, why)
		}
		return err
	}
	err := run(dctx, opt, &rec, phase)
	rec.End = now().UTC()
	rec.Seconds = rec.End.Sub(rec.Start).Seconds()
	switch {
	case err != nil:
		rec.Error = err.Error()
	case !allPassed(rec.Checks):
		var failed []string
		for _, c := range rec.Checks {
			if !c.Passed {
				failed = append(failed, fmt.Sprintf("%s: expected %s, saw %s", c.Name, c.Expect, c.Saw))
			}
		}
		rec.Error = "checks failed: " + strings.Join(failed, "; ")
	case rec.End.Sub(rec.Start) > p.RTO:
		rec.Error = policy.ErrRTOOnly
	default:
		rec.Passed = true
	}
	return rec
}

func run(ctx context.Context, opt Options, rec *catalog.Drill, phase func(string, func() error) error) error {
	p := opt.Process
	var err error
	switch sb := opt.Sandbox.(type) {
	case Provisioner:
		err = provisioned(ctx, opt, sb, rec, phase)
	case Server:
		err = restoreInto(ctx, opt, sb, rec, phase)
	default:
		err = fmt.Errorf("sandbox %s can neither be restored into nor restore", opt.Sandbox.Kind())
	}
	if err != nil {
		return err
	}
	sb := opt.Sandbox
	return phase("checks", func() error {
		// The checks read data the backup brought: they run as a role
		// that can read everything and do nothing else (a superuser
		// reading a view someone made into a function call would run it
		// with every right).
		role, password := "drctl_check_"+catalog.NewRecordID()[:8], catalog.NewRecordID()
		if err := createCheckRole(ctx, sb.DSN(p.Database), role, password); err != nil {
			return err
		}
		checks, err := RunChecks(ctx, sb.DSNAs(role, password, p.Database)+" options='-c search_path=pg_catalog,public'", p, rec.RecoveryPoint)
		rec.Checks = checks
		return err
	})
}

// provisioned has the sandbox restore the backup where it runs; for a
// base backup, the replay is then followed from here.
func provisioned(ctx context.Context, opt Options, sb Provisioner, rec *catalog.Drill, phase func(string, func() error) error) error {
	p, b := opt.Process, opt.Backup
	spec := Spec{DrillID: rec.DrillID, Process: p.Name, Mode: p.Mode, Database: p.Database, BackupID: b.ID,
		Expires: rec.Start.Add(p.DrillTimeout + expiryMargin)}
	switch p.Mode {
	case policy.ModeLogical:
		if err := phase("restore", func() error { return sb.Provision(ctx, spec) }); err != nil {
			return err
		}
		rec.RecoveryPoint = b.StartTime
		return nil
	case policy.ModePITR:
		if err := phase("restore", func() error { return sb.Provision(ctx, spec) }); err != nil {
			return err
		}
		return phase("replay", func() error {
			point, err := waitPromoted(ctx, sb.DSN("postgres"), sb.Err)
			rec.RecoveryPoint = point
			return err
		})
	}
	return fmt.Errorf("process %s: unknown mode %q", p.Name, p.Mode)
}

// expiryMargin: a sandbox whose drill was killed is the janitor's this
// long after the drill's timeout would have ended it.
const expiryMargin = 10 * time.Minute

// restoreInto restores the backup from here into the sandbox's server.
func restoreInto(ctx context.Context, opt Options, sb Server, rec *catalog.Drill, phase func(string, func() error) error) error {
	p, b := opt.Process, opt.Backup
	switch p.Mode {
	case policy.ModeLogical:
		if err := phase("restore", func() error {
			if err := sb.InitDB(ctx); err != nil {
				return err
			}
			if err := sb.Start(ctx); err != nil {
				return err
			}
			return opt.Restorer.Logical(ctx, b.ID, sb.Env(p.Database))
		}); err != nil {
			return err
		}
		rec.RecoveryPoint = b.StartTime
	case policy.ModePITR:
		if err := phase("restore", func() error { return opt.Restorer.Physical(ctx, b.ID, sb.DataDir()) }); err != nil {
			return err
		}
		if err := phase("replay", func() error {
			if err := sb.Start(ctx); err != nil {
				return err
			}
			point, err := waitPromoted(ctx, sb.DSN("postgres"), func() error { return nil })
			rec.RecoveryPoint = point
			return err
		}); err != nil {
			return err
		}
	default:
		return fmt.Errorf("process %s: unknown mode %q", p.Name, p.Mode)
	}
	return nil
}

// createCheckRole makes the login role the checks run as: no superuser,
// member of pg_read_all_data.
func createCheckRole(ctx context.Context, dsn, role, password string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to the restored server: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sql := fmt.Sprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s IN ROLE pg_read_all_data",
		pgx.Identifier{role}.Sanitize(), quoteLiteral(password))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create the checks' role: %w", err)
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// waitPromoted waits for recovery to end (the archive replayed, the server
// promoted) and returns the time of the last commit it replayed.
func waitPromoted(ctx context.Context, dsn string, alive func() error) (time.Time, error) {
	var conn *pgx.Conn
	var err error
	for {
		if conn, err = pgx.Connect(ctx, dsn); err == nil {
			break
		}
		if gone := alive(); gone != nil {
			return time.Time{}, fmt.Errorf("the restored server is gone: %w", gone)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("connect to the restored server: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var inRecovery bool
		var last *time.Time
		if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_xact_replay_timestamp()").Scan(&inRecovery, &last); err != nil {
			if gone := alive(); gone != nil {
				return time.Time{}, fmt.Errorf("the restored server is gone: %w", gone)
			}
			return time.Time{}, fmt.Errorf("follow recovery: %w", err)
		}
		if !inRecovery {
			if last == nil {
				return time.Time{}, nil
			}
			return last.UTC(), nil
		}
		if gone := alive(); gone != nil {
			return time.Time{}, fmt.Errorf("the restored server is gone: %w", gone)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("recovery did not end: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func allPassed(cs []catalog.DrillCheck) bool {
	for _, c := range cs {
		if !c.Passed {
			return false
		}
	}
	return true
}
