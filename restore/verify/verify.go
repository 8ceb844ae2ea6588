package verify

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgtools"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/restore"
	"github.com/drctl/drctl/storage"
)

// Report is the outcome of verifying one backup.
type Report struct {
	ID      string         `json:"id"`
	Kind    string         `json:"kind"`
	OK      bool           `json:"ok"`
	Objects []ObjectReport `json:"objects"`
	// WAL is the continuity of the archive from a base backup onwards.
	WAL *wal.ChainReport `json:"wal,omitempty"`
	// Signature: "verified (PRINCIPALS)", "signed (not checked: ...)" or
	// "unsigned".
	Signature string `json:"signature"`
	// WALSignatureErrors name the archived WAL files, from the backup's
	// start on, whose signature is missing or wrong (with allowed signers).
	WALSignatureErrors []string `json:"wal_signature_errors,omitempty"`
}

// ObjectReport is the outcome for one object.
type ObjectReport struct {
	Key        string `json:"key"`
	OK         bool   `json:"ok"`
	Size       int64  `json:"size"`
	TOCEntries int    `json:"toc_entries,omitempty"`
	Files      int    `json:"files_checked,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Options configure Verify.
type Options struct {
	Store     storage.Store
	Keys      *codec.Keys
	PgRestore string // empty finds pg_restore
	// Verifier, when set, checks the signatures of the WAL a base backup
	// needs (the manifest's was checked when it was loaded).
	Verifier catalog.Verifier
}

// Verify re-reads every object of the backup: size and SHA-256 against the
// manifest, decryption (age authenticates every 64 KiB chunk and the end),
// decompression (zstd frame checksums), and, for dumps, that pg_restore can
// read the archive's table of contents. The error names the first bad object.
//
// With a verifier, the manifest's signature is checked first, and the
// backup verified from the very bytes checked (m may have been read
// unchecked); a refused signature is reported against the backup (OK false,
// an error) and nothing else of it is read.
func Backup(ctx context.Context, opt Options, m *catalog.Manifest) (*Report, error) {
	rep := &Report{ID: m.ID, Kind: m.Kind, OK: true, Objects: []ObjectReport{}}
	if opt.Verifier != nil {
		checked, who, err := catalog.LoadVerified(ctx, opt.Store, m.ID, opt.Verifier)
		switch {
		case errors.Is(err, catalog.ErrUnsigned) || errors.Is(err, catalog.ErrBadSignature):
			rep.OK, rep.Signature = false, "refused: "+err.Error()
			return rep, err
		case err != nil:
			return nil, err
		}
		m, rep.Signature = checked, "verified ("+who+")"
	} else {
		state, err := catalog.SignatureState(ctx, opt.Store, m.ID)
		if err != nil {
			return nil, fmt.Errorf("backup %s: %w", m.ID, err)
		}
		rep.Signature = state
	}
	if !opt.Keys.CanDecrypt(m.Encryption) {
		return nil, codec.ErrNoIdentity
	}
	if m.Kind == catalog.KindPhysical {
		err := verifyPhysical(ctx, opt, m, rep)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && !errors.Is(err, restore.ErrCorrupt) {
			return nil, err
		}
		entries, lerr := (&wal.Archive{Store: opt.Store}).List(ctx)
		if lerr != nil {
			return nil, lerr
		}
		chain, cerr := WAL(ctx, opt, m, entries)
		if cerr != nil {
			return nil, cerr
		}
		rep.WAL = chain
		if !chain.OK {
			rep.OK = false
			if err == nil {
				err = walError(m, chain)
			}
		}
		if opt.Verifier != nil {
			if serr := verifyWALSignatures(ctx, opt, m, entries, rep); serr != nil {
				return nil, serr
			}
			if len(rep.WALSignatureErrors) > 0 {
				rep.OK = false
				if err == nil {
					err = fmt.Errorf("backup %s: %w: %s", m.ID, restore.ErrCorrupt, rep.WALSignatureErrors[0])
				}
			}
		}
		return rep, err
	}
	// Only a dump's table of contents needs pg_restore.
	pgRestore, err := pgtools.Resolve(opt.PgRestore, "pg_restore")
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, obj := range m.Objects {
		or := ObjectReport{Key: obj.Key, Size: obj.Size}
		n, err := verifyObject(ctx, opt, pgRestore, m, obj)
		or.TOCEntries = n
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !errors.Is(err, restore.ErrCorrupt) {
				return nil, err // not the object's fault: no verdict
			}
			or.Error = err.Error()
			rep.OK = false
			if firstErr == nil {
				firstErr = fmt.Errorf("backup %s: %w", m.ID, err)
			}
		} else {
			or.OK = true
		}
		rep.Objects = append(rep.Objects, or)
	}
	return rep, firstErr
}

func verifyObject(ctx context.Context, opt Options, pgRestore string, m *catalog.Manifest, obj catalog.Object) (int, error) {
	stream, err := restore.OpenObject(ctx, opt.Store, m, obj, opt.Keys, nil)
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	if obj.Role != catalog.RoleDump {
		if _, err := io.Copy(io.Discard, stream); err != nil {
			return 0, err
		}
		return 0, stream.Check()
	}
	cmd := pgtools.NewCommand(ctx, pgRestore, []string{"--list"}, nil)
	stdin, err := cmd.Cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.Cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Cmd.Start(); err != nil {
		return 0, fmt.Errorf("start pg_restore: %w", err)
	}
	entries := make(chan int, 1)
	go func() {
		n := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); line != "" && !strings.HasPrefix(line, ";") {
				n++
			}
		}
		io.Copy(io.Discard, stdout)
		entries <- n
	}()
	// pg_restore --list stops reading after the table of contents; the rest
	// of the stream is still decrypted and decompressed to check it whole.
	_, copyErr := io.Copy(&tolerantWriter{w: stdin}, stream)
	stdin.Close()
	n := <-entries
	waitErr := cmd.Wait()
	if copyErr != nil {
		return n, copyErr
	}
	if err := stream.Check(); err != nil {
		return n, err
	}
	if waitErr != nil {
		return n, fmt.Errorf("%s: %w: the dump's table of contents is unreadable: %v", obj.Key, restore.ErrCorrupt, waitErr)
	}
	if n == 0 {
		return n, fmt.Errorf("%s: %w: the dump's table of contents is empty", obj.Key, restore.ErrCorrupt)
	}
	return n, nil
}

// ErrWALGap marks a WAL archive with missing segments.
var ErrWALGap = errors.New("WAL archive has a gap")

func walError(m *catalog.Manifest, c *wal.ChainReport) error {
	if len(c.Conflicts) > 0 && len(c.Missing) == 0 {
		return fmt.Errorf("backup %s: %w: %s archived twice with different content (two primaries writing to one repository?): recovery refuses to choose",
			m.ID, ErrWALGap, c.Conflicts[0])
	}
	if !c.Restorable {
		return fmt.Errorf("backup %s: %w: segment %s, needed to make the backup consistent, is missing: the backup cannot be restored",
			m.ID, ErrWALGap, c.Missing[0])
	}
	return fmt.Errorf("backup %s: %w: %d segments missing (first %s): point-in-time recovery from this backup stops at %s; targets after it are lost",
		m.ID, ErrWALGap, len(c.Missing), c.Missing[0], c.WindowTo)
}

// tolerantWriter passes writes on until the reader goes away, then
// discards them.
type tolerantWriter struct {
	w      io.Writer
	closed bool
}

func (t *tolerantWriter) Write(p []byte) (int, error) {
	if !t.closed {
		if _, err := t.w.Write(p); err != nil {
			if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.ErrClosedPipe) {
				return 0, err
			}
			t.closed = true
		}
	}
	return len(p), nil
}

// verifyWALSignatures checks the signature of every archived WAL file from
// the backup's start segment on, and of every timeline history file.
// Partial segments are checked when fetched (their hash needs the content).
func verifyWALSignatures(ctx context.Context, opt Options, m *catalog.Manifest, entries []wal.Entry, rep *Report) error {
	first, ok := wal.ParseSegmentName(m.Physical.StartSegment, m.Physical.WALSegmentSize)
	if !ok {
		return fmt.Errorf("backup %s: bad start segment %q", m.ID, m.Physical.StartSegment)
	}
	a := &wal.Archive{Store: opt.Store, Verifier: opt.Verifier}
	for _, e := range entries {
		if e.Partial {
			continue
		}
		name := e.Name
		if len(name) > 24 && !wal.IsHistoryName(name) {
			name = name[:24] // .backup files follow their segment
		}
		if s, ok := wal.ParseSegmentName(name, m.Physical.WALSegmentSize); ok && s.No < first.No {
			continue
		}
		if _, err := a.CheckSignature(ctx, e.Name, e.Hash); err != nil {
			if !errors.Is(err, catalog.ErrUnsigned) && !errors.Is(err, catalog.ErrBadSignature) {
				return err
			}
			rep.WALSignatureErrors = append(rep.WALSignatureErrors, err.Error())
		}
	}
	return nil
}
