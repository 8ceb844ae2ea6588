// Package logical takes logical backups: pg_dump's custom-format archive
// streamed through zstd and age into one repository object, committed by a
// manifest written last.
package logical

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pgtools"
	"github.com/drctl/drctl/engine/pipeline"
	"github.com/drctl/drctl/storage"
)

// BackupOptions configure one logical backup.
type BackupOptions struct {
	Store storage.Store
	DSN   *pgdsn.DSN
	// Keys' recipients encrypt the dump. Without recipients the backup is
	// refused unless AllowUnencrypted is set.
	Keys             *codec.Keys
	AllowUnencrypted bool
	Labels           map[string]string
	Codec            codec.Options
	// PgDump is the pg_dump program; empty finds it (see pgtools.Find).
	PgDump      string
	ToolVersion string
	Now         func() time.Time
	// Signer, when set, signs the manifest (see catalog.Commit).
	Signer catalog.Signer
	// Lease tunes the writer's lease (see catalog.AcquireLease); its Now
	// defaults to the backup's.
	Lease  catalog.LeaseOptions
	Logger *slog.Logger
}

// Backup dumps the database and returns the committed manifest.
func Backup(ctx context.Context, opt BackupOptions) (*catalog.Manifest, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	encrypted := opt.Keys.Encrypted()
	if !encrypted && !opt.AllowUnencrypted {
		return nil, codec.ErrNoRecipients
	}
	pgDump, err := pgtools.Resolve(opt.PgDump, "pg_dump")
	if err != nil {
		return nil, err
	}
	start := opt.Now().UTC()
	server, dbname, err := describeServer(ctx, opt.DSN)
	if err != nil {
		return nil, err
	}
	m := &catalog.Manifest{
		FormatVersion: catalog.FormatVersion,
		ID:            catalog.NewID(start),
		Kind:          catalog.KindLogical,
		Database:      dbname,
		StartTime:     start,
		Labels:        opt.Labels,
		Server:        server,
		Compression:   "zstd",
		Encryption:    opt.Keys.Encryption(),
		Tool: catalog.Tool{
			Name: "drctl", Version: opt.ToolVersion,
			PgDump: pgtools.Version(pgDump), PgDumpArg: "-Fc -Z0",
		},
	}
	key := catalog.DumpKey(m.ID, encrypted)
	log := opt.Logger.With("backup", m.ID, "database", dbname)
	log.Info("backup started", "dsn", opt.DSN.Redacted(), "object", key, "repository", opt.Store.String())

	lease, err := catalog.AcquireLease(ctx, opt.Store, m.ID, catalog.LeaseBackup, opt.Lease.Defaults(opt.Now, log))
	if err != nil {
		return nil, err
	}
	defer lease.Release(ctx)
	obj, err := streamDump(ctx, opt, pgDump, key)
	if err == nil {
		err = lease.Check()
	}
	if err != nil {
		// A half-written object is invisible already; a whole one without a
		// manifest is harmless, but tidy it up when the server lets us.
		if derr := opt.Store.Delete(context.WithoutCancel(ctx), key); derr != nil {
			log.Warn("could not delete the data of the failed backup", "object", key, "error", derr)
		}
		return nil, fmt.Errorf("backup of %s: %w", dbname, err)
	}
	m.Objects = []catalog.Object{obj}
	m.EndTime = opt.Now().UTC()
	if err := catalog.Commit(ctx, opt.Store, m, opt.Signer); err != nil {
		if !errors.Is(err, catalog.ErrCommitUncertain) {
			opt.Store.Delete(context.WithoutCancel(ctx), key)
		}
		return nil, err
	}
	log.Info("backup committed", "raw_bytes", obj.RawSize, "stored_bytes", obj.Size,
		"seconds", m.EndTime.Sub(m.StartTime).Seconds())
	return m, nil
}

func describeServer(ctx context.Context, dsn *pgdsn.DSN) (catalog.Server, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn.ConnString())
	if err != nil {
		return catalog.Server{}, "", fmt.Errorf("connect to %s: %s", dsn.Redacted(), dsn.RedactError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var s catalog.Server
	var db string
	err = conn.QueryRow(cctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int,
		current_database(), pg_database_size(current_database())`).Scan(&s.Version, &s.VersionNum, &db, &s.DatabaseSize)
	if err != nil {
		return s, "", fmt.Errorf("describe server: %w", err)
	}
	// Readable by superusers and pg_monitor members only; optional.
	conn.QueryRow(cctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&s.SystemIdentifier)
	return s, db, nil
}

// streamDump runs pg_dump into the codec and the store. The object is
// completed only after pg_dump has exited successfully: a failed dump
// aborts the upload, so it never becomes visible.
func streamDump(ctx context.Context, opt BackupOptions, pgDump, key string) (catalog.Object, error) {
	conninfo, env := opt.DSN.CommandArgs()
	args := []string{"--format=custom", "--compress=0", "--no-password"}
	if conninfo != "" {
		args = append(args, "--dbname="+conninfo)
	}
	cmdCtx, kill := context.WithCancel(ctx)
	defer kill()
	cmd := pgtools.NewCommand(cmdCtx, pgDump, args, env)
	stdout, err := cmd.Cmd.StdoutPipe()
	if err != nil {
		return catalog.Object{}, err
	}
	up, err := pipeline.Start(ctx, opt.Store, key, opt.Keys, opt.Codec)
	if err != nil {
		return catalog.Object{}, err
	}
	if err := cmd.Cmd.Start(); err != nil {
		up.Abort(err)
		return catalog.Object{}, fmt.Errorf("start pg_dump: %w", err)
	}
	// The hash of the table of contents goes into the manifest: a restore
	// checks it before pg_restore runs any of the dump's SQL.
	toc := pgarchive.NewTOCHash()
	defer toc.Close()
	_, copyErr := io.Copy(up, io.TeeReader(stdout, toc))
	if copyErr != nil {
		kill() // pg_dump may be blocked writing to a pipe nobody reads
	}
	if err := cmd.Wait(); err != nil && (copyErr == nil || ctx.Err() == nil && !errors.Is(copyErr, context.Canceled)) {
		// pg_dump's own message says more than a broken pipe, unless
		// the upload failed first and pg_dump was killed for it.
		if copyErr == nil {
			copyErr = err
		}
	}
	if copyErr != nil {
		up.Abort(copyErr)
		return catalog.Object{}, copyErr
	}
	obj, err := up.Finish(ctx, catalog.RoleDump)
	if err != nil {
		return obj, err
	}
	if obj.TOCSHA256, err = toc.Sum(); err != nil {
		// The dump is whole and readable by pg_restore; drctl's restore
		// will say it cannot read this archive version.
		opt.Logger.Warn("drctl cannot read this pg_dump's table of contents: restore it with pg_restore (FORMAT.md)", "error", err)
	}
	return obj, nil
}
