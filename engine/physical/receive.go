package physical

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage"
)

// ReceiveOptions configure WAL streaming.
type ReceiveOptions struct {
	Store            storage.Store
	DSN              *pgdsn.DSN
	Keys             *codec.Keys
	AllowUnencrypted bool
	// Slot is the physical replication slot; it is created when missing.
	Slot string
	// FlushInterval is how often the unfinished segment is stored as a
	// partial segment (default 1s): the recovery point's age.
	FlushInterval time.Duration
	// Signer signs each archived file; Codec tunes compression.
	Signer catalog.Signer
	Codec  codec.Options
	// Lease tunes the receiver's lease, wal-receive-<slot>.
	Lease  catalog.LeaseOptions
	Logger *slog.Logger
}

// Receive streams WAL from the slot into the archive until ctx ends. Each
// completed segment is archived like wal-push would; the unfinished one is
// stored as a partial segment every FlushInterval. The slot is advanced
// only past what is stored, so a receiver that dies loses nothing the
// server still holds. Connection failures are retried with backoff.
func Receive(ctx context.Context, opt ReceiveOptions) error {
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if !opt.Keys.Encrypted() && !opt.AllowUnencrypted {
		return codec.ErrNoRecipients
	}
	if opt.Slot == "" || strings.ContainsAny(opt.Slot, " '\"") {
		return fmt.Errorf("invalid replication slot name %q", opt.Slot)
	}
	lease, err := catalog.AcquireLease(ctx, opt.Store, "wal-receive-"+opt.Slot, catalog.LeaseWALReceive, opt.Lease.Defaults(time.Now, opt.Logger))
	if err != nil {
		return err
	}
	defer lease.Release(ctx)
	backoff := time.Second
	for {
		r := &receiver{opt: opt, archive: &wal.Archive{Store: opt.Store, Keys: opt.Keys, AllowUnencrypted: opt.AllowUnencrypted, Signer: opt.Signer, Codec: opt.Codec}}
		err := r.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "28P01" || pgErr.Code == "28000") {
			return err // permission or authentication: retrying will not help
		}
		if r.received {
			backoff = time.Second
		}
		opt.Logger.Warn("WAL streaming interrupted; reconnecting", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

type receiver struct {
	opt      ReceiveOptions
	archive  *wal.Archive
	segSize  int64
	timeline uint32
	seg      wal.Segment
	buf      []byte // the current segment's bytes received so far
	flushed  int    // bytes of buf stored (as a partial or whole segment)
	received bool
}

func (r *receiver) run(ctx context.Context) error {
	conn, err := connectReplication(ctx, r.opt.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	r.timeline = uint32(sys.Timeline)
	text, err := show(ctx, conn, "wal_segment_size")
	if err != nil {
		return err
	}
	if r.segSize, err = parseSize(text); err != nil {
		return err
	}
	r.archive.SegmentSize = r.segSize
	restart, err := r.ensureSlot(ctx, conn)
	if err != nil {
		return err
	}
	if err := r.archiveHistory(ctx, conn); err != nil {
		return err
	}
	// The server keeps whole segments from the one holding the slot's
	// restart point: start at its beginning and rebuild it in memory.
	r.seg = wal.SegmentOf(r.timeline, restart, r.segSize)
	start := r.seg.StartLSN(r.segSize)
	r.buf = make([]byte, 0, r.segSize)
	r.opt.Logger.Info("streaming WAL", "slot", r.opt.Slot, "from", start.String(), "timeline", r.timeline)
	err = pglogrepl.StartReplication(ctx, conn, r.opt.Slot, pglogrepl.LSN(start),
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication, Timeline: int32(r.timeline)})
	if err != nil {
		return fmt.Errorf("START_REPLICATION: %w", err)
	}
	err = r.stream(ctx, conn)
	// Whatever arrived is stored before giving up the connection.
	if ferr := r.flushPartial(context.WithoutCancel(ctx)); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// ensureSlot creates the slot (reserving WAL now) when missing and returns
// its restart point.
func (r *receiver) ensureSlot(ctx context.Context, conn *pgconn.PgConn) (wal.LSN, error) {
	for attempt := 0; attempt < 2; attempt++ {
		res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+r.opt.Slot).ReadAll()
		if err != nil {
			return 0, fmt.Errorf("READ_REPLICATION_SLOT: %w", err)
		}
		if len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) >= 2 && res[0].Rows[0][1] != nil {
			row := res[0].Rows[0]
			if string(row[0]) != "physical" {
				return 0, fmt.Errorf("replication slot %s is %s, not physical", r.opt.Slot, row[0])
			}
			return wal.ParseLSN(string(row[1]))
		}
		if _, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+r.opt.Slot+" PHYSICAL RESERVE_WAL").ReadAll(); err != nil {
			return 0, fmt.Errorf("create replication slot %s: %w", r.opt.Slot, err)
		}
		r.opt.Logger.Info("created replication slot", "slot", r.opt.Slot)
	}
	return 0, fmt.Errorf("replication slot %s has no restart point", r.opt.Slot)
}

// archiveHistory stores the current timeline's history file, which point-
// in-time recovery across a promotion needs.
func (r *receiver) archiveHistory(ctx context.Context, conn *pgconn.PgConn) error {
	if r.timeline <= 1 {
		return nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, conn, int32(r.timeline))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY: %w", err)
	}
	_, err = r.archive.PushData(ctx, h.FileName, h.Content)
	return err
}

func (r *receiver) stream(ctx context.Context, conn *pgconn.PgConn) error {
	flushTick := time.NewTicker(r.opt.FlushInterval)
	defer flushTick.Stop()
	statusDue := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-flushTick.C:
			if err := r.flushPartial(ctx); err != nil {
				return err
			}
			if err := r.sendStatus(ctx, conn); err != nil {
				return err
			}
			statusDue = time.Now().Add(10 * time.Second)
		default:
		}
		if time.Now().After(statusDue) {
			if err := r.sendStatus(ctx, conn); err != nil {
				return err
			}
			statusDue = time.Now().Add(10 * time.Second)
		}
		rctx, cancel := context.WithTimeout(ctx, r.opt.FlushInterval/2+10*time.Millisecond)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			return fmt.Errorf("receive WAL: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				if err := r.write(ctx, conn, wal.LSN(x.WALStart), x.WALData); err != nil {
					return err
				}
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				if k.ReplyRequested {
					if err := r.sendStatus(ctx, conn); err != nil {
						return err
					}
				}
			}
		case *pgproto3.CopyDone:
			return errors.New("the server ended the timeline (promotion); reconnecting to follow the new one")
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		}
	}
}

// write appends WAL at lsn, archiving each segment as it completes.
func (r *receiver) write(ctx context.Context, conn *pgconn.PgConn, lsn wal.LSN, data []byte) error {
	r.received = true
	for len(data) > 0 {
		off := int64(lsn) - int64(r.seg.StartLSN(r.segSize))
		if off != int64(len(r.buf)) {
			return fmt.Errorf("WAL stream out of order: got %s, expected %s", lsn, wal.LSN(int64(r.seg.StartLSN(r.segSize))+int64(len(r.buf))))
		}
		n := min(int64(len(data)), r.segSize-off)
		r.buf = append(r.buf, data[:n]...)
		data, lsn = data[n:], lsn+wal.LSN(n)
		if int64(len(r.buf)) == r.segSize {
			name := r.seg.Name(r.segSize)
			if _, err := r.archive.PushData(ctx, name, r.buf); err != nil {
				return err
			}
			if err := r.archive.DeletePartial(ctx, name); err != nil {
				r.opt.Logger.Warn("could not delete the partial copy", "segment", name, "error", err)
			}
			r.opt.Logger.Debug("archived streamed segment", "segment", name)
			r.seg = r.seg.Next()
			r.buf = r.buf[:0]
			r.flushed = 0
			if err := r.sendStatus(ctx, conn); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushPartial stores the unfinished segment when it grew since last time.
func (r *receiver) flushPartial(ctx context.Context) error {
	if len(r.buf) == r.flushed || r.buf == nil {
		return nil
	}
	if err := r.archive.PutPartial(ctx, r.seg.Name(r.segSize), r.buf); err != nil {
		return err
	}
	r.flushed = len(r.buf)
	return nil
}

// sendStatus confirms what is stored: the server may then recycle it.
func (r *receiver) sendStatus(ctx context.Context, conn *pgconn.PgConn) error {
	stored := pglogrepl.LSN(int64(r.seg.StartLSN(r.segSize)) + int64(r.flushed))
	return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: stored, WALFlushPosition: stored, WALApplyPosition: stored,
	})
}
