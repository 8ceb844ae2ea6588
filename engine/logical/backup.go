// Package logical takes logical backups: pg_dump's custom-format archive
// streamed through zstd and age into one repository object, committed by a
// manifest written last.
package logical

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pgtools"
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
	Logger      *slog.Logger
}

// ErrNoRecipients refuses to write a backup nobody meant to leave unencrypted.
var ErrNoRecipients = errors.New("no age recipients: give --recipients-file or DRCTL_AGE_RECIPIENTS_FILE, or --no-encryption to store the backup unencrypted")

// Backup dumps the database and returns the committed manifest.
func Backup(ctx context.Context, opt BackupOptions) (*catalog.Manifest, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	encrypted := opt.Keys != nil && opt.Keys.Encrypted()
	if !encrypted && !opt.AllowUnencrypted {
		return nil, ErrNoRecipients
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
		Encryption:    catalog.Encryption{Method: "none"},
		Tool: catalog.Tool{
			Name: "drctl", Version: opt.ToolVersion,
			PgDump: pgtools.Version(pgDump), PgDumpArg: "-Fc -Z0",
		},
	}
	if encrypted {
		m.Encryption = catalog.Encryption{Method: "age", Recipients: opt.Keys.RecipientStrings}
	}
	key := catalog.DumpKey(m.ID, encrypted)
	log := opt.Logger.With("backup", m.ID, "database", dbname)
	log.Info("backup started", "dsn", opt.DSN.Redacted(), "object", key, "repository", opt.Store.String())

	obj, err := streamDump(ctx, opt, pgDump, key)
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
	if err := catalog.Commit(ctx, opt.Store, m); err != nil {
		opt.Store.Delete(context.WithoutCancel(ctx), key)
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
// closes the upload with an error, so it never becomes visible.
func streamDump(ctx context.Context, opt BackupOptions, pgDump, key string) (catalog.Object, error) {
	conninfo, env := opt.DSN.CommandArgs()
	args := []string{"--format=custom", "--compress=0", "--no-password"}
	if conninfo != "" {
		args = append(args, "--dbname="+conninfo)
	}
	g, gctx := errgroup.WithContext(ctx)
	cmd := pgtools.NewCommand(gctx, pgDump, args, env)
	stdout, err := cmd.Cmd.StdoutPipe()
	if err != nil {
		return catalog.Object{}, err
	}
	if err := cmd.Cmd.Start(); err != nil {
		return catalog.Object{}, fmt.Errorf("start pg_dump: %w", err)
	}
	pr, pw := io.Pipe()
	var raw int64
	g.Go(func() error {
		enc, err := codec.NewWriter(pw, opt.Keys, opt.Codec)
		if err != nil {
			pw.CloseWithError(err)
			cmd.Cmd.Process.Kill()
			cmd.Wait()
			return err
		}
		_, cerr := io.Copy(enc, stdout)
		werr := cmd.Wait()
		if werr != nil {
			cerr = werr // pg_dump's own message says more than a pipe error
		}
		if cerr != nil {
			enc.Abort()
			pw.CloseWithError(cerr)
			return cerr
		}
		if err := enc.Close(); err != nil {
			pw.CloseWithError(err)
			return err
		}
		raw = enc.RawBytes()
		return pw.Close()
	})
	sum := sha256.New()
	counter := &countingReader{r: pr, h: sum}
	g.Go(func() error {
		err := opt.Store.Put(gctx, key, counter)
		if err != nil {
			pr.CloseWithError(err) // unblock the producer
		}
		return err
	})
	if err := g.Wait(); err != nil {
		return catalog.Object{}, err
	}
	// The store said the object is durable; check it is the size we sent.
	info, err := opt.Store.Stat(ctx, key)
	if err != nil {
		return catalog.Object{}, fmt.Errorf("check stored %s: %w", key, err)
	}
	if info.Size != counter.n {
		return catalog.Object{}, fmt.Errorf("stored %s has %d bytes, %d were sent", key, info.Size, counter.n)
	}
	return catalog.Object{
		Key: key, Role: catalog.RoleDump, Size: counter.n, RawSize: raw,
		SHA256: hex.EncodeToString(sum.Sum(nil)),
	}, nil
}

// countingReader hashes and counts what the store reads.
type countingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.h.Write(p[:n])
	return n, err
}
