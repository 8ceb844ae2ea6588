// Package restore brings backups back. This package reads stored objects
// for the others: checked against the manifest (size, SHA-256), decrypted
// and decompressed. Its subpackages do the work:
//
//   - restore/logical feeds a dump to pg_restore (restore --into);
//   - restore/physical writes a base backup into a data directory, confined
//     to it, and starts PostgreSQL to recover to a target (restore --to);
//   - restore/verify re-reads backups and checks WAL continuity (verify).
package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/storage"
)

// ErrCorrupt marks an object whose stored bytes do not match its manifest
// or do not decrypt or decompress.
var ErrCorrupt = errors.New("corrupted object")

// Object is one stored object being read: the plaintext, and a check
// that, once the plaintext reached EOF, all stored bytes matched.
type Object struct {
	obj     catalog.Object
	raw     io.ReadCloser
	reader  *hashingReader
	decoded io.ReadCloser
	plain   int64 // plaintext bytes read

	closeOnce sync.Once
	closeErr  error
}

// Progress is told how many stored bytes of how many were read.
type Progress func(done, total int64)

// OpenObject opens obj of backup m for reading; Check must be called once
// the plaintext reached EOF.
func OpenObject(ctx context.Context, st storage.Store, m *catalog.Manifest, obj catalog.Object, keys *codec.Keys, progress Progress) (*Object, error) {
	info, err := st.Stat(ctx, obj.Key)
	if err != nil {
		if errors.Is(err, storage.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w: missing from the repository", obj.Key, ErrCorrupt)
		}
		return nil, err
	}
	if info.Size != obj.Size {
		return nil, fmt.Errorf("%s: %w: %d bytes stored, the manifest says %d", obj.Key, ErrCorrupt, info.Size, obj.Size)
	}
	raw, err := st.Get(ctx, obj.Key)
	if err != nil {
		return nil, err
	}
	hr := &hashingReader{r: raw, h: sha256.New(), total: obj.Size, progress: progress}
	decoded, err := codec.NewReader(hr, m.Encryption.Encrypted(), keys)
	if err != nil {
		raw.Close()
		if errors.Is(err, codec.ErrNoIdentity) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w: %v", obj.Key, ErrCorrupt, err)
	}
	return &Object{obj: obj, raw: raw, reader: hr, decoded: decoded}, nil
}

// Read returns plaintext; decryption or decompression failures name the
// object as corrupt. A failure to read the stored bytes (the network, the
// store) is not the object's fault and is returned as it is.
func (s *Object) Read(p []byte) (int, error) {
	n, err := s.decoded.Read(p)
	// More plaintext than the manifest says is damage: stop it before a
	// small hostile object streams without end into a restore.
	if s.plain += int64(n); s.obj.RawSize > 0 && s.plain > s.obj.RawSize {
		return 0, fmt.Errorf("%s: %w: more than the manifest's %d bytes of plaintext", s.obj.Key, ErrCorrupt, s.obj.RawSize)
	}
	switch {
	case err == nil || errors.Is(err, io.EOF):
	case s.reader.err != nil:
		err = fmt.Errorf("%s: read: %w", s.obj.Key, s.reader.err)
	case !errors.Is(err, context.Canceled):
		err = fmt.Errorf("%s: %w: %v", s.obj.Key, ErrCorrupt, err)
	}
	return n, err
}

// check reads whatever is left of the stored object and compares its size
// and SHA-256 with the manifest. Call it after the plaintext reached EOF.
func (s *Object) Check() error {
	if _, err := io.Copy(io.Discard, s.reader); err != nil {
		return fmt.Errorf("%s: read: %w", s.obj.Key, err)
	}
	if s.reader.n != s.obj.Size {
		return fmt.Errorf("%s: %w: read %d bytes, the manifest says %d", s.obj.Key, ErrCorrupt, s.reader.n, s.obj.Size)
	}
	if got := hex.EncodeToString(s.reader.h.Sum(nil)); got != s.obj.SHA256 {
		return fmt.Errorf("%s: %w: SHA-256 %s, the manifest says %s", s.obj.Key, ErrCorrupt, got, s.obj.SHA256)
	}
	return nil
}

// Close releases the object; it may be called more than once. The stored
// bytes' reader is closed first: that ends a read hanging in it (and the
// decoder's own background reads) before the decoder is closed.
func (s *Object) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.raw.Close()
		s.decoded.Close()
	})
	return s.closeErr
}

// Interrupt ends a read of the stored bytes that hangs, from another
// goroutine; Close must still be called once the readers are done.
func (s *Object) Interrupt() { s.raw.Close() }

type hashingReader struct {
	r        io.Reader
	h        hash.Hash
	n, total int64
	progress Progress
	err      error // the first error reading the stored bytes
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && h.err == nil {
		h.err = err
	}
	h.n += int64(n)
	h.h.Write(p[:n])
	if h.progress != nil && n > 0 {
		h.progress(h.n, h.total)
	}
	return n, err
}
