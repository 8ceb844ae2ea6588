package verify

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strings"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/restore"
)

// serverManifest is PostgreSQL's backup_manifest (version 1).
type serverManifest struct {
	Version int `json:"PostgreSQL-Backup-Manifest-Version"`
	Files   []struct {
		Path        string `json:"Path"`
		EncodedPath string `json:"Encoded-Path"`
		Size        int64  `json:"Size"`
		Algorithm   string `json:"Checksum-Algorithm"`
		Checksum    string `json:"Checksum"`
	} `json:"Files"`
	Checksum string `json:"Manifest-Checksum"`
}

type manifestFile struct {
	size      int64
	algorithm string
	checksum  string
	seen      bool
}

// parseServerManifest checks the manifest's own SHA-256 and indexes its files.
func parseServerManifest(data []byte) (map[string]*manifestFile, error) {
	var sm serverManifest
	if err := json.Unmarshal(data, &sm); err != nil {
		return nil, fmt.Errorf("backup_manifest is not valid JSON: %v", err)
	}
	if sm.Version != 1 && sm.Version != 2 {
		return nil, fmt.Errorf("backup_manifest version %d is not supported", sm.Version)
	}
	// The checksum covers everything before the line that holds it.
	i := bytes.LastIndex(data, []byte("\"Manifest-Checksum\""))
	if i < 0 {
		return nil, errors.New("backup_manifest has no Manifest-Checksum")
	}
	sum := sha256.Sum256(data[:i])
	if hex.EncodeToString(sum[:]) != strings.ToLower(sm.Checksum) {
		return nil, errors.New("backup_manifest's own checksum does not match its content")
	}
	files := map[string]*manifestFile{}
	for _, f := range sm.Files {
		path := f.Path
		if path == "" && f.EncodedPath != "" {
			raw, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				return nil, fmt.Errorf("backup_manifest: bad Encoded-Path %q", f.EncodedPath)
			}
			path = string(raw)
		}
		files[path] = &manifestFile{size: f.Size, algorithm: f.Algorithm, checksum: strings.ToLower(f.Checksum)}
	}
	return files, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// verifyPhysical checks a base backup's objects like any other (size,
// SHA-256, decryption, decompression) and, in the spirit of
// pg_verifybackup, every file in its tars against the server's
// backup_manifest: present, same size, same CRC32C.
func verifyPhysical(ctx context.Context, opt Options, m *catalog.Manifest, rep *Report) error {
	var files map[string]*manifestFile
	var firstErr error
	fail := func(or *ObjectReport, err error) {
		or.OK, or.Error = false, err.Error()
		rep.OK = false
		if firstErr == nil {
			firstErr = fmt.Errorf("backup %s: %w", m.ID, err)
		}
	}
	// The manifest first: the tars are checked against it.
	objs := append([]catalog.Object(nil), m.Objects...)
	sort.SliceStable(objs, func(i, j int) bool {
		return objs[i].Role == catalog.RoleManifest && objs[j].Role != catalog.RoleManifest
	})
	for _, o := range objs {
		or := ObjectReport{Key: o.Key, Size: o.Size, OK: true}
		err := func() error {
			stream, err := restore.OpenObject(ctx, opt.Store, m, o, opt.Keys, nil)
			if err != nil {
				return err
			}
			defer stream.Close()
			switch o.Role {
			case catalog.RoleManifest:
				data, err := io.ReadAll(stream)
				if err != nil {
					return err
				}
				if err := stream.Check(); err != nil {
					return err
				}
				if files, err = parseServerManifest(data); err != nil {
					return fmt.Errorf("%s: %w: %v", o.Key, restore.ErrCorrupt, err)
				}
				return nil
			case catalog.RoleTar:
				prefix := ""
				if o.TablespaceOID != "" {
					prefix = "pg_tblspc/" + o.TablespaceOID + "/"
				}
				n, err := verifyTar(stream, prefix, files)
				or.Files = n
				if err != nil {
					return fmt.Errorf("%s: %w: %v", o.Key, restore.ErrCorrupt, err)
				}
				if _, err := io.Copy(io.Discard, stream); err != nil {
					return err
				}
				return stream.Check()
			}
			_, err = io.Copy(io.Discard, stream)
			if err == nil {
				err = stream.Check()
			}
			return err
		}()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !errors.Is(err, restore.ErrCorrupt) {
				return err
			}
			fail(&or, err)
		}
		rep.Objects = append(rep.Objects, or)
	}
	if files != nil && firstErr == nil {
		var missing []string
		for path, f := range files {
			if !f.seen {
				missing = append(missing, path)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			err := fmt.Errorf("%w: %d files of backup_manifest are in no archive, first %s", restore.ErrCorrupt, len(missing), missing[0])
			or := ObjectReport{Key: catalog.ObjectKey(m.ID, "backup_manifest"), OK: false}
			fail(&or, err)
			rep.Objects = append(rep.Objects, or)
		}
	}
	return firstErr
}

func verifyTar(r io.Reader, prefix string, files map[string]*manifestFile) (int, error) {
	if files == nil {
		return 0, errors.New("no backup_manifest to check against")
	}
	tr := tar.NewReader(r)
	n := 0
	buf := make([]byte, 1<<20)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		path := prefix + strings.TrimPrefix(hdr.Name, "./")
		f, ok := files[path]
		if !ok {
			continue // not every file is listed (none today), none must be missing
		}
		crc := crc32.New(castagnoli)
		size, err := io.CopyBuffer(crc, tr, buf)
		if err != nil {
			return n, err
		}
		f.seen = true
		n++
		if size != f.size {
			return n, fmt.Errorf("%s: %d bytes, backup_manifest says %d", path, size, f.size)
		}
		if f.algorithm == "CRC32C" {
			// PostgreSQL writes the CRC in memory order (little-endian).
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], crc.Sum32())
			if got := hex.EncodeToString(b[:]); got != f.checksum {
				return n, fmt.Errorf("%s: CRC32C %s, backup_manifest says %s", path, got, f.checksum)
			}
		}
	}
}

// VerifyWAL checks that the WAL archive holds every segment the physical
// backup needs, from its start to the newest archived segment. Following
// timelines needs the identity (history files are encrypted); without one,
// only the backup's own timeline is followed.
func WAL(ctx context.Context, opt Options, m *catalog.Manifest, entries []wal.Entry) (*wal.ChainReport, error) {
	history, err := ReadHistory(ctx, opt, entries)
	if err != nil {
		return nil, err
	}
	return WALChain(m, entries, history)
}

// ReadHistory reads the archive's timeline history files, or returns none
// when no identity is at hand to decrypt them.
func ReadHistory(ctx context.Context, opt Options, entries []wal.Entry) (map[uint32]wal.Switch, error) {
	if opt.Keys == nil || len(opt.Keys.Identities) == 0 {
		return nil, nil
	}
	history, err := (&wal.Archive{Store: opt.Store, Keys: opt.Keys}).History(ctx, entries)
	if err != nil {
		return nil, fmt.Errorf("read timeline history: %w", err)
	}
	return history, nil
}

// WALChain is VerifyWAL with the archive listing and history already read.
func WALChain(m *catalog.Manifest, entries []wal.Entry, history map[uint32]wal.Switch) (*wal.ChainReport, error) {
	p := m.Physical
	start, ok := wal.ParseSegmentName(p.StartSegment, p.WALSegmentSize)
	if !ok {
		return nil, fmt.Errorf("backup %s: bad start segment %q", m.ID, p.StartSegment)
	}
	stop, err := wal.ParseLSN(p.StopLSN)
	if err != nil {
		return nil, err
	}
	return wal.Chain(entries, history, start, stop, p.WALSegmentSize), nil
}
