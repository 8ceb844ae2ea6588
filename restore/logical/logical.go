package logical

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pgtools"
	"github.com/drctl/drctl/restore"
	"github.com/drctl/drctl/storage"
)

// Options configure a restore of a logical backup.
type Options struct {
	Store    storage.Store
	Manifest *catalog.Manifest
	Keys     *codec.Keys
	// Target names the database to restore into; it is created when missing.
	Target *pgdsn.DSN
	// Clean allows restoring into a database that already holds objects:
	// the backup's objects are dropped and recreated.
	Clean bool
	// NoOwner, NoPrivileges and Role are pg_restore's --no-owner,
	// --no-privileges and --role.
	NoOwner, NoPrivileges bool
	Role                  string
	// DisableTriggers is pg_restore's --disable-triggers (data only; a
	// superuser).
	DisableTriggers bool
	// Selection narrows the restore to some tables, schemas or sections.
	Selection Selection
	PgRestore string // empty finds pg_restore
	Progress  restore.Progress
	Logger    *slog.Logger
}

// Result reports a finished restore.
type Result struct {
	ID              string `json:"id"`
	Database        string `json:"database"`
	CreatedDatabase bool   `json:"created_database"`
	// Entries is how many entries of the dump's table of contents were
	// restored (all of them without a selection).
	Entries int `json:"entries"`
	// Tables names the tables whose data was restored.
	Tables []string `json:"tables"`
	// LeftOut names what the selection left out that a user might expect.
	LeftOut     []string `json:"left_out,omitempty"`
	StoredBytes int64    `json:"stored_bytes"`
	RawBytes    int64    `json:"raw_bytes"`
	Seconds     float64  `json:"seconds"`
}

// ErrNotEmpty refuses to restore over existing data.
var ErrNotEmpty = errors.New("target database is not empty")

// holdback is how much plaintext is kept from pg_restore until the whole
// stored object has been read and checked: pg_restore cannot finish, and so
// cannot commit, before drctl knows the object matched its manifest.
const holdback = 1 << 20

// Logical restores a logical backup with pg_restore --single-transaction:
// a corrupt or interrupted stream leaves the target as it was.
func Restore(ctx context.Context, opt Options) (*Result, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	m := opt.Manifest
	obj, err := dumpObject(m, opt.Keys)
	if err != nil {
		return nil, err
	}
	if err := opt.Selection.Check(); err != nil {
		return nil, err
	}
	if opt.Clean && (opt.Selection.Narrows() || opt.Selection.DataOnly || len(opt.Selection.Sections) > 0) {
		return nil, fmt.Errorf("%w: --clean drops and recreates every object it restores, which with --table, --schema, --exclude-*, --section or --data-only would also drop the schemas, types and functions they need, or nothing at all: restore into a new database and move what you need from there", ErrSelection)
	}
	pgRestore, err := pgtools.Resolve(opt.PgRestore, "pg_restore")
	if err != nil {
		return nil, err
	}
	start := time.Now()
	dbname := opt.Target.Database()
	log := opt.Logger.With("backup", m.ID, "database", dbname)

	// The dump's table of contents comes first in the stream: read it,
	// choose the entries and check the target's roles before touching it.
	stream, err := restore.OpenObject(ctx, opt.Store, m, obj, opt.Keys, opt.Progress)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	head := &spill{limit: spillLimit}
	defer head.Close()
	arch := pgarchive.NewReader(stream)
	arch.Pass = head
	if err := arch.ReadTOC(); err != nil {
		return nil, fmt.Errorf("backup %s: the dump's table of contents: %w", m.ID, err)
	}
	// pg_restore runs the table of contents' SQL as it goes: it must be
	// what the manifest vouches for before pg_restore sees any of it.
	want := obj.TOCSHA256
	if want == "" {
		if want, err = legacyTOCHash(ctx, opt, obj, log); err != nil {
			return nil, err
		}
	}
	if got := head.sum(); got != want {
		return nil, fmt.Errorf("%s: %w: its table of contents has SHA-256 %s, the manifest says %s; nothing was restored", obj.Key, restore.ErrCorrupt, got, want)
	}
	p, err := choose(arch.Entries, opt.Selection)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", m.ID, err)
	}
	for _, w := range p.leftOut {
		log.Info("left out: " + w) // also in the result
	}
	if err := checkRoles(ctx, opt.Target, p, opt); err != nil {
		return nil, err
	}

	// Data or post-data alone go into the tables an earlier restore made.
	created, err := prepareTarget(ctx, opt.Target, opt.Clean || !opt.Selection.createsObjects(), opt.Selection.createsObjects(), opt.Role)
	if err != nil {
		return nil, err
	}
	log.Info("restore started", "target", opt.Target.Redacted(), "created_database", created)

	err = runRestore(ctx, opt, pgRestore, stream, arch, head, p)
	if err != nil {
		if created {
			if derr := dropDatabase(context.WithoutCancel(ctx), opt.Target); derr != nil {
				log.Warn("could not drop the database created for the failed restore", "error", derr)
			}
		}
		return nil, fmt.Errorf("restore %s into %s: %w", m.ID, dbname, err)
	}
	res := &Result{ID: m.ID, Database: dbname, CreatedDatabase: created, Tables: []string{}, LeftOut: append([]string{}, p.leftOut...),
		StoredBytes: obj.Size, RawBytes: obj.RawSize, Seconds: time.Since(start).Seconds()}
	for i := range arch.Entries {
		e := &arch.Entries[i]
		if p.restores(e) && !never[e.Desc] && p.inSections(e) {
			res.Entries++
		}
		if p.readsData(e) && e.Desc == "TABLE DATA" {
			res.Tables = append(res.Tables, qualified(e))
		}
	}
	log.Info("restore finished", "seconds", res.Seconds)
	return res, nil
}

// legacyTOCHash serves backups whose manifest predates toc_sha256: it
// reads the whole stored object first, checks it against the manifest, and
// returns the hash of its table of contents, which the restore's own
// download must then match. It costs a second download.
func legacyTOCHash(ctx context.Context, opt Options, obj catalog.Object, log *slog.Logger) (string, error) {
	log.Info("the manifest has no toc_sha256 (an older backup): checking the whole dump before restoring it")
	_, sum, err := readWhole(ctx, opt.Store, opt.Manifest, obj, opt.Keys, nil)
	return sum, err
}

// dumpObject is a logical backup's dump, which keys must be able to read.
func dumpObject(m *catalog.Manifest, keys *codec.Keys) (catalog.Object, error) {
	if m.Kind != catalog.KindLogical {
		return catalog.Object{}, fmt.Errorf("backup %s is a %s backup, not a logical one", m.ID, m.Kind)
	}
	obj, ok := m.Object(catalog.RoleDump)
	if !ok {
		return catalog.Object{}, fmt.Errorf("backup %s: manifest lists no dump object", m.ID)
	}
	if !keys.CanDecrypt(m.Encryption) {
		return catalog.Object{}, codec.ErrNoIdentity
	}
	return obj, nil
}

// readWhole reads a dump to its end, checking the stored object against
// its manifest: the archive as read (header, entries, data sizes) and the
// hex SHA-256 of its table of contents.
func readWhole(ctx context.Context, st storage.Store, m *catalog.Manifest, obj catalog.Object, keys *codec.Keys, progress restore.Progress) (*pgarchive.Reader, string, error) {
	stream, err := restore.OpenObject(ctx, st, m, obj, keys, progress)
	if err != nil {
		return nil, "", err
	}
	defer stream.Close()
	toc := sha256.New()
	arch := pgarchive.NewReader(stream)
	arch.Pass = toc
	if err := arch.ReadTOC(); err != nil {
		return nil, "", fmt.Errorf("backup %s: the dump's table of contents: %w", m.ID, err)
	}
	arch.Pass = nil
	if err := arch.ReadData(); err != nil {
		return nil, "", fmt.Errorf("backup %s: the dump's data: %w", m.ID, err)
	}
	if err := stream.Check(); err != nil {
		return nil, "", err
	}
	return arch, hex.EncodeToString(toc.Sum(nil)), nil
}

// runRestore feeds pg_restore the dump as it arrives: the table of
// contents already read (head), then the data blocks pg_restore will read
// and no others, so that it cannot finish before the last of them — held
// back until the whole stored object has been checked.
func runRestore(ctx context.Context, opt Options, pgRestore string, stream *restore.Object, arch *pgarchive.Reader, head *spill, p *plan) error {
	conninfo, env := opt.Target.CommandArgs()
	args := []string{"--no-password", "--exit-on-error", "--single-transaction"}
	if opt.Clean {
		args = append(args, "--clean", "--if-exists")
	}
	if opt.NoOwner {
		args = append(args, "--no-owner")
	}
	if opt.NoPrivileges {
		args = append(args, "--no-privileges")
	}
	if opt.Role != "" {
		args = append(args, "--role="+opt.Role)
	}
	if opt.DisableTriggers {
		args = append(args, "--disable-triggers")
	}
	for _, sec := range opt.Selection.Sections {
		args = append(args, "--section="+sec)
	}
	if opt.Selection.DataOnly {
		args = append(args, "--data-only")
	}
	if p.ids != nil {
		list, err := os.CreateTemp(os.Getenv("DRCTL_SPOOL_DIR"), "drctl-restore-list-")
		if err != nil {
			return fmt.Errorf("pg_restore's list of entries: %w", err)
		}
		defer os.Remove(list.Name())
		_, werr := list.WriteString(p.listFile())
		if cerr := list.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("pg_restore's list of entries: %w", werr)
		}
		args = append(args, "--use-list="+list.Name())
	}
	args = append(args, "--dbname="+conninfo)
	cmdCtx, kill := context.WithCancel(ctx)
	defer kill()
	cmd := pgtools.NewCommand(cmdCtx, pgRestore, args, env)
	cmd.Cmd.Cancel = func() error { return cmd.Cmd.Process.Kill() }
	stdin, err := cmd.Cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Cmd.Start(); err != nil {
		return fmt.Errorf("start pg_restore: %w", err)
	}
	source := filtered(stream, arch, head, p)
	defer source.Close()
	feedErr := feed(stdin, source)
	var we *writeError
	if errors.As(feedErr, &we) {
		// pg_restore stopped reading: its own exit status says why.
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			return err
		}
		// It finished without what was held back: it must not (it is
		// given only what it reads). Check the rest, and say so loudly.
		_, rest := io.Copy(io.Discard, source)
		if rest == nil {
			rest = source.Check()
		}
		if rest != nil {
			return fmt.Errorf("pg_restore finished before drctl had read the whole dump, so the target database was changed, and the dump is damaged: %w", rest)
		}
		opt.Logger.Warn("pg_restore finished before drctl had read the whole dump; the rest of it checked out, so the restore stands")
		return nil
	}
	if feedErr != nil {
		// Kill before closing stdin: pg_restore must not mistake a broken
		// stream for the end of the archive.
		kill()
		cmd.Wait()
		stdin.Close()
		if st := cmd.Cmd.ProcessState; st != nil && st.Success() {
			// It had finished on its own: it must not have (it is given
			// only what it reads, the last of it held back).
			return fmt.Errorf("pg_restore finished before drctl had read the whole dump, so the target database was changed, and the dump is damaged: %w", feedErr)
		}
		return feedErr
	}
	stdin.Close()
	return cmd.Wait()
}

// filtered is the archive as pg_restore gets it: head, then the data
// blocks it reads, produced by reading the stream to its end. Close it
// once done with it.
func filtered(stream *restore.Object, arch *pgarchive.Reader, head *spill, p *plan) *pipedObject {
	pr, pw := io.Pipe()
	// pg_dump writes table data in chunks of a row or so: batch them.
	bw := bufio.NewWriterSize(pw, 256<<10)
	arch.Skip = func(e *pgarchive.Entry) bool { return !p.readsData(e) }
	arch.Pass = bw
	o := &pipedObject{pr: pr, stream: stream, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		toc, err := head.reader()
		if err == nil {
			_, err = io.Copy(bw, toc)
		}
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		err = arch.ReadData()
		var pe *pgarchive.PassError
		if errors.As(err, &pe) {
			err = pe.Err // the reading side went away
		}
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
	}()
	return o
}

type pipedObject struct {
	pr     *io.PipeReader
	stream *restore.Object
	done   chan struct{}
}

func (o *pipedObject) Read(b []byte) (int, error) { return o.pr.Read(b) }
func (o *pipedObject) Check() error               { return o.stream.Check() }

// Close stops the reading goroutine and waits for it; closing the stored
// object ends a read that hangs.
func (o *pipedObject) Close() {
	o.pr.CloseWithError(errors.New("restore ended"))
	o.stream.Interrupt()
	<-o.done
}

// checkedReader is a stored object's plaintext, and the check of the whole
// object once the plaintext reached its end (restore.Object).
type checkedReader interface {
	io.Reader
	Check() error
}

// feed copies the plaintext to pg_restore, holding back the last bytes
// until the stored object has been read to its end and checked.
func feed(w io.Writer, stream checkedReader) error {
	buf := make([]byte, 256<<10)
	pending := make([]byte, 0, holdback+len(buf))
	for {
		n, err := stream.Read(buf)
		pending = append(pending, buf[:n]...)
		if over := len(pending) - holdback; over > 0 {
			if _, werr := w.Write(pending[:over]); werr != nil {
				return &writeError{werr}
			}
			pending = append(pending[:0], pending[over:]...)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := stream.Check(); err != nil {
		return err
	}
	if _, err := w.Write(pending); err != nil {
		return &writeError{err}
	}
	return nil
}

// prepareTarget creates the database when it is missing (reporting true;
// owned by owner when set) if create allows, and otherwise refuses one that
// holds objects unless nonEmpty is set.
func prepareTarget(ctx context.Context, target *pgdsn.DSN, nonEmpty, create bool, owner string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, target.ConnString())
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name
			if !create {
				return false, fmt.Errorf("database %s does not exist: data and post-data go into the tables a restore of pre-data made", target.Database())
			}
			return true, createDatabase(cctx, target, owner)
		}
		return false, fmt.Errorf("connect to %s: %s", target.Redacted(), target.RedactError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var objects int64
	err = conn.QueryRow(cctx, `SELECT
	  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%')
	+ (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
	     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
	+ (SELECT count(*) FROM pg_namespace
	     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND nspname NOT LIKE 'pg\_%')
	+ (SELECT count(*) FROM pg_largeobject_metadata)
	+ (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')`).Scan(&objects)
	if err != nil {
		return false, fmt.Errorf("inspect target database: %w", err)
	}
	if objects > 0 && !nonEmpty {
		return false, fmt.Errorf("%w: %s holds %d objects; restore into a new database or give --clean to replace the backup's objects", ErrNotEmpty, target.Database(), objects)
	}
	return false, nil
}

func maintenanceConn(ctx context.Context, target *pgdsn.DSN) (*pgx.Conn, error) {
	var lastErr error
	for _, db := range []string{"postgres", "template1"} {
		conn, err := pgx.Connect(ctx, target.WithDatabase(db).ConnString())
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("connect to the maintenance database: %s", target.RedactError(lastErr))
}

func createDatabase(ctx context.Context, target *pgdsn.DSN, owner string) error {
	conn, err := maintenanceConn(ctx, target)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	name := pgx.Identifier{target.Database()}.Sanitize()
	sql := "CREATE DATABASE " + name + " TEMPLATE template0"
	if owner != "" {
		sql += " OWNER " + pgx.Identifier{owner}.Sanitize() // --role creates in it
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func dropDatabase(ctx context.Context, target *pgdsn.DSN) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := maintenanceConn(cctx, target)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(cctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{target.Database()}.Sanitize()+" WITH (FORCE)")
	return err
}

type writeError struct{ err error }

func (w *writeError) Error() string { return "write to pg_restore: " + w.err.Error() }
func (w *writeError) Unwrap() error { return w.err }

// Contents reads a logical backup's dump to its end: its header, and its
// table of contents with the size of each entry's data. The stored object
// is checked against its manifest on the way, as verify does.
func Contents(ctx context.Context, st storage.Store, m *catalog.Manifest, keys *codec.Keys, progress restore.Progress) (*pgarchive.Header, []pgarchive.Entry, error) {
	obj, err := dumpObject(m, keys)
	if err != nil {
		return nil, nil, err
	}
	arch, _, err := readWhole(ctx, st, m, obj, keys, progress)
	if err != nil {
		return nil, nil, err
	}
	return &arch.Header, arch.Entries, nil
}
