package physical

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pipeline"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage"
)

// BaseBackupOptions configure one base backup.
type BaseBackupOptions struct {
	Store            storage.Store
	DSN              *pgdsn.DSN
	Keys             *codec.Keys
	AllowUnencrypted bool
	Labels           map[string]string
	Codec            codec.Options
	ToolVersion      string
	// WALWait bounds the wait for the backup's WAL to reach the archive
	// (default 2 minutes). A backup whose WAL never arrives is not committed.
	WALWait time.Duration
	Now     func() time.Time
	// Signer, when set, signs the manifest (see catalog.Commit).
	Signer catalog.Signer
	// Lease tunes the writer's lease (see catalog.AcquireLease).
	Lease  catalog.LeaseOptions
	Logger *slog.Logger
}

// BaseBackup streams a base backup of the whole cluster: one tar per
// tablespace and the server's backup_manifest, each through the codec into
// its own object. The manifest is committed only after the WAL from the
// backup's start to its end is in the archive, so that every listed base
// backup can be restored.
func BaseBackup(ctx context.Context, opt BaseBackupOptions) (*catalog.Manifest, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.WALWait == 0 {
		opt.WALWait = 2 * time.Minute
	}
	encrypted := opt.Keys.Encrypted()
	if !encrypted && !opt.AllowUnencrypted {
		return nil, codec.ErrNoRecipients
	}
	conn, err := connectReplication(ctx, opt.DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	server := catalog.Server{Version: conn.ParameterStatus("server_version"), SystemIdentifier: sys.SystemID}
	if v, err := show(ctx, conn, "server_version_num"); err == nil {
		server.VersionNum, _ = strconv.Atoi(v)
	}
	if server.VersionNum < 150000 {
		return nil, fmt.Errorf("base backups need PostgreSQL 15 or newer; the server is %s", server.Version)
	}
	segSizeText, err := show(ctx, conn, "wal_segment_size")
	if err != nil {
		return nil, err
	}
	segSize, err := parseSize(segSizeText)
	if err != nil {
		return nil, fmt.Errorf("wal_segment_size %q: %w", segSizeText, err)
	}

	start := opt.Now().UTC()
	m := &catalog.Manifest{
		FormatVersion: catalog.FormatVersion,
		ID:            catalog.NewID(start),
		Kind:          catalog.KindPhysical,
		Database:      "(cluster)",
		StartTime:     start,
		Labels:        opt.Labels,
		Server:        server,
		Compression:   "zstd",
		Encryption:    opt.Keys.Encryption(),
		Tool:          catalog.Tool{Name: "drctl", Version: opt.ToolVersion},
		Physical:      &catalog.Physical{WALSegmentSize: segSize},
	}
	log := opt.Logger.With("backup", m.ID)
	log.Info("base backup started", "dsn", opt.DSN.Redacted(), "repository", opt.Store.String())

	lease, err := catalog.AcquireLease(ctx, opt.Store, m.ID, catalog.LeaseBaseBackup, opt.Lease.Defaults(opt.Now, log))
	if err != nil {
		return nil, err
	}
	defer lease.Release(ctx)
	bb := &baseBackupStream{opt: opt, m: m, encrypted: encrypted, log: log}
	err = bb.run(ctx, conn)
	if err == nil {
		err = waitForWAL(ctx, opt, m)
	}
	if err == nil {
		err = lease.Check()
	}
	if err != nil {
		bb.abort()
		for _, o := range m.Objects {
			opt.Store.Delete(context.WithoutCancel(ctx), o.Key)
		}
		return nil, fmt.Errorf("base backup: %w", err)
	}
	m.EndTime = opt.Now().UTC()
	for _, o := range m.Objects {
		m.Server.DatabaseSize += o.RawSize
	}
	if err := catalog.Commit(ctx, opt.Store, m, opt.Signer); err != nil {
		if !errors.Is(err, catalog.ErrCommitUncertain) {
			for _, o := range m.Objects {
				opt.Store.Delete(context.WithoutCancel(ctx), o.Key)
			}
		}
		return nil, err
	}
	log.Info("base backup committed", "start_lsn", m.Physical.StartLSN, "stop_lsn", m.Physical.StopLSN,
		"stored_bytes", m.StoredSize(), "seconds", m.EndTime.Sub(m.StartTime).Seconds())
	return m, nil
}

// baseBackupStream reads BASE_BACKUP's copy stream (PostgreSQL 15+,
// TARGET 'client'): CopyData messages tagged 'n' (a new archive), 'd'
// (data), 'p' (progress), 'm' (the manifest follows).
type baseBackupStream struct {
	opt       BaseBackupOptions
	m         *catalog.Manifest
	encrypted bool
	log       *slog.Logger
	current   *pipeline.Upload
}

func (b *baseBackupStream) label() string { return "drctl " + b.m.ID }

// run sends BASE_BACKUP with WAIT false: the server would otherwise wait,
// without limit, for its archiver; drctl waits for the WAL itself, bounded
// by WALWait, and says which segment is missing.
func (b *baseBackupStream) run(ctx context.Context, conn *pgconn.PgConn) error {
	cmd := fmt.Sprintf("BASE_BACKUP (LABEL '%s', CHECKPOINT 'fast', WAL false, WAIT false, MANIFEST 'yes', "+
		"MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true, TARGET 'client')", b.label())
	conn.Frontend().Send(&pgproto3.Query{String: cmd})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("send BASE_BACKUP: %w", err)
	}
	var rows [][]string
	var results [][][]string
	copying := false
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("receive base backup: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.RowDescription:
			rows = nil
		case *pgproto3.DataRow:
			row := make([]string, len(msg.Values))
			for i, v := range msg.Values {
				row[i] = string(v)
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			results = append(results, rows)
			rows = nil
		case *pgproto3.CopyOutResponse:
			copying = true
			if len(results) < 1 || len(results[0]) != 1 || len(results[0][0]) < 2 {
				return errors.New("base backup: no start position before the data")
			}
			b.m.Physical.StartLSN = results[0][0][0]
			tli, _ := strconv.ParseUint(results[0][0][1], 10, 32)
			b.m.Physical.StartTimeline = uint32(tli)
		case *pgproto3.CopyData:
			if !copying || len(msg.Data) == 0 {
				return errors.New("base backup: unexpected copy data")
			}
			if err := b.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.CopyDone:
			copying = false
			if err := b.finishCurrent(ctx); err != nil {
				return err
			}
		case *pgproto3.NoticeResponse:
			b.log.Info("server notice", "message", msg.Message)
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("server: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.ReadyForQuery:
			return b.finishHeader(results)
		}
	}
}

func (b *baseBackupStream) finishHeader(results [][][]string) error {
	if len(results) == 0 {
		return errors.New("base backup: server sent no end position")
	}
	// The end position is the last one-row result of (LSN, timeline);
	// servers may close with an empty CommandComplete after it.
	var last [][]string
	for _, r := range results[1:] {
		if len(r) == 1 && len(r[0]) >= 2 && strings.Contains(r[0][0], "/") {
			last = r
		}
	}
	if last == nil {
		return errors.New("base backup: server sent no end position")
	}
	p := b.m.Physical
	p.StopLSN = last[0][0]
	tli, _ := strconv.ParseUint(last[0][1], 10, 32)
	p.StopTimeline = uint32(tli)
	startLSN, err := wal.ParseLSN(p.StartLSN)
	if err != nil {
		return err
	}
	stopLSN, err := wal.ParseLSN(p.StopLSN)
	if err != nil {
		return err
	}
	p.StartSegment = wal.SegmentOf(p.StartTimeline, startLSN, p.WALSegmentSize).Name(p.WALSegmentSize)
	// The stop position is the end of the backup's WAL: the segment holding
	// the byte before it is the last one needed.
	p.StopSegment = wal.SegmentOf(p.StopTimeline, stopLSN-1, p.WALSegmentSize).Name(p.WALSegmentSize)
	if len(b.m.Objects) == 0 {
		return errors.New("base backup: the server sent no archive")
	}
	return nil
}

func (b *baseBackupStream) handleCopyData(ctx context.Context, data []byte) error {
	switch data[0] {
	case 'n': // archive name \0 tablespace path \0
		parts := strings.SplitN(string(data[1:]), "\x00", 3)
		if len(parts) < 2 {
			return errors.New("base backup: malformed new-archive message")
		}
		name, path := parts[0], parts[1]
		oid := strings.TrimSuffix(name, ".tar")
		if path == "" {
			oid = ""
		}
		return b.startObject(ctx, name, catalog.RoleTar, oid, path)
	case 'm':
		return b.startObject(ctx, "backup_manifest", catalog.RoleManifest, "", "")
	case 'd':
		if b.current == nil {
			return errors.New("base backup: data before any archive")
		}
		_, err := b.current.Write(data[1:])
		return err
	case 'p':
		return nil
	default:
		return fmt.Errorf("base backup: unknown copy message type %q", data[0])
	}
}

func (b *baseBackupStream) startObject(ctx context.Context, name, role, oid, path string) error {
	if err := b.finishCurrent(ctx); err != nil {
		return err
	}
	if strings.ContainsAny(name, "/\\") || name == "" {
		return fmt.Errorf("base backup: unsafe archive name %q", name)
	}
	ext := ".zst"
	if b.encrypted {
		ext += ".age"
	}
	key := catalog.ObjectKey(b.m.ID, name+ext)
	u, err := pipeline.Start(ctx, b.opt.Store, key, b.opt.Keys, b.opt.Codec)
	if err != nil {
		return err
	}
	b.current = u
	b.m.Objects = append(b.m.Objects, catalog.Object{Key: key, Role: role, TablespaceOID: oid, TablespacePath: path})
	b.log.Debug("archive started", "name", name, "tablespace", path)
	return nil
}

func (b *baseBackupStream) finishCurrent(ctx context.Context) error {
	if b.current == nil {
		return nil
	}
	u := b.current
	b.current = nil
	obj, err := u.Finish(ctx, "")
	if err != nil {
		return err
	}
	last := &b.m.Objects[len(b.m.Objects)-1]
	last.Size, last.SHA256, last.RawSize = obj.Size, obj.SHA256, obj.RawSize
	return nil
}

func (b *baseBackupStream) abort() {
	if b.current != nil {
		b.current.Abort(errors.New("base backup failed"))
		b.current = nil
	}
}

// waitForWAL waits until every segment from the backup's start to its stop
// is in the archive.
func waitForWAL(ctx context.Context, opt BaseBackupOptions, m *catalog.Manifest) error {
	p := m.Physical
	first, _ := wal.ParseSegmentName(p.StartSegment, p.WALSegmentSize)
	last, _ := wal.ParseSegmentName(p.StopSegment, p.WALSegmentSize)
	archive := &wal.Archive{Store: opt.Store}
	deadline := time.Now().Add(opt.WALWait)
	seg := first
	// The last segment is usually archived within tens of milliseconds of
	// the backup's end: poll fast first, then back off.
	poll := 10 * time.Millisecond
	for {
		name := seg.Name(p.WALSegmentSize)
		entries, err := archive.Lookup(ctx, name)
		if err != nil {
			return err
		}
		found := false
		for _, e := range entries {
			found = found || !e.Partial
		}
		if found {
			if seg.No >= last.No {
				return nil
			}
			seg = seg.Next()
			if seg.Timeline != last.Timeline && seg.No >= last.No {
				seg.Timeline = last.Timeline
			}
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("WAL segment %s, needed to restore this backup, did not reach the archive within %s: "+
				"set archive_command = 'drctl wal-push %%p' (archive_mode = on) or run drctl wal-receive", name, opt.WALWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		poll = min(poll*2, 500*time.Millisecond)
	}
}
