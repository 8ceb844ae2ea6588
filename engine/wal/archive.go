package wal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/storage"
)

// An archived file is stored as wal/<name>.<hash>.zst.age, where <hash> is
// the first 32 hex digits of the SHA-256 of its plaintext. The hash in the
// key lets a re-push of the same file be recognised without decrypting
// anything (the archiving host holds only public keys), and a different file
// under the same name (two primaries: split brain) be refused. A partial
// segment from wal-receive is wal/<name>.partial.zst.age, replaced as it grows.
const hashLen = 32

// ErrNotFound means the archive has no such file: the normal end of
// recovery, answered quietly.
var ErrNotFound = errors.New("not in the WAL archive")

// ErrConflict means two different files were archived under one name.
var ErrConflict = errors.New("different WAL file already archived under this name (two primaries writing to one repository?)")

// Entry is one archived file.
type Entry struct {
	Name    string // the PostgreSQL file name
	Hash    string // plaintext SHA-256 prefix; empty for partial segments
	Partial bool
	Key     string
	Size    int64
	ModTime time.Time
}

// ParseKey reads an archive object key.
func ParseKey(key string) (Entry, bool) {
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok {
		return Entry{}, false
	}
	rest = strings.TrimSuffix(strings.TrimSuffix(rest, ".age"), ".zst")
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return Entry{}, false
	}
	name, tag := rest[:i], rest[i+1:]
	if !IsArchivable(name) {
		return Entry{}, false
	}
	if tag == "partial" {
		return Entry{Name: name, Partial: true, Key: key}, IsSegmentName(name)
	}
	if len(tag) != hashLen {
		return Entry{}, false
	}
	return Entry{Name: name, Hash: tag, Key: key}, true
}

// Archive is the WAL archive of one repository.
type Archive struct {
	// beforeUpload, when set, is called once the file has been read and
	// before anything is stored: push-ahead checks there that the file did
	// not change under it.
	beforeUpload func() error
	// beforeEncode, when set (tests), runs once a file is mapped.
	beforeEncode func()

	Store storage.Store
	// Keys encrypt (recipients) and decrypt (identities).
	Keys             *codec.Keys
	AllowUnencrypted bool
	Codec            codec.Options
	// SegmentSize pads partial segments when they are fetched.
	SegmentSize int64
	// Signer signs each archived file's name and content hash, stored
	// beside it (see SignatureKey). Verifier, when set, makes Fetch refuse
	// a file without a signature by an allowed signer.
	Signer   catalog.Signer
	Verifier catalog.Verifier
}

// streamTag names, in signatures, the copy of an unfinished segment that
// wal-receive keeps (wal/<segment>.partial.zst.age), apart from a
// "<segment>.partial" file a promotion archives through wal-push.
const streamTag = ".stream"

// SignatureKey is where the signature of an archived file lives: name is
// PostgreSQL's file name (with ".stream" for wal-receive's copy of an
// unfinished segment) and hash the plaintext SHA-256 prefix its key carries.
func SignatureKey(name, hash string) string { return Prefix + name + "." + hash + ".sig" }

// SignedMessage is what a WAL file's signature covers: its name and the
// SHA-256 prefix of its content (the same as in its key, which Fetch checks
// against the content). ssh-keygen -Y verify checks it with stock tools:
// printf 'drctl-wal-v1\n%s\n%s\n' NAME HASH | ssh-keygen -Y verify ...
func SignedMessage(name, hash string) []byte {
	return []byte("drctl-wal-v1\n" + name + "\n" + hash + "\n")
}

// sign stores the signature of name's content hash, if a signer is set.
func (a *Archive) sign(ctx context.Context, name, hash string) error {
	if a.Signer == nil {
		return nil
	}
	sig, err := a.Signer.Sign(SignedMessage(name, hash))
	if err != nil {
		return err
	}
	return a.Store.Put(ctx, SignatureKey(name, hash), bytes.NewReader(sig))
}

// SignExisting signs an archived file that has no signature yet (see
// catalog.SignExisting), once its content has been read and found to match
// the hash in its name (a.Keys must decrypt it); partial copies are skipped
// (wal-receive signs each new one). It reports whether it signed.
func (a *Archive) SignExisting(ctx context.Context, e Entry) (bool, error) {
	if e.Partial || a.Signer == nil {
		return false, nil
	}
	if _, err := a.Store.Stat(ctx, SignatureKey(e.Name, e.Hash)); err == nil {
		return false, nil
	} else if !errors.Is(err, storage.ErrNotExist) {
		return false, err
	}
	rc, err := a.Store.Get(ctx, e.Key)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	dec, err := codec.NewReader(rc, strings.HasSuffix(e.Key, ".age"), a.Keys)
	if err != nil {
		return false, fmt.Errorf("%s: %w", e.Key, err)
	}
	defer dec.Close()
	h := sha256.New()
	if _, err := io.Copy(h, dec); err != nil {
		return false, fmt.Errorf("%s: %w", e.Key, err)
	}
	if got := hex.EncodeToString(h.Sum(nil))[:hashLen]; got != e.Hash {
		return false, fmt.Errorf("%s: content SHA-256 %s does not match its name: not signed", e.Key, got)
	}
	return true, a.sign(ctx, e.Name, e.Hash)
}

// CheckSignature verifies the stored signature of an archived file and
// returns the signer's principals.
func (a *Archive) CheckSignature(ctx context.Context, name, hash string) (string, error) {
	who, err := catalog.VerifySignature(ctx, a.Store, SignatureKey(name, hash), SignedMessage(name, hash), a.Verifier)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return who, nil
}

func (a *Archive) ext() string {
	if a.Keys.Encrypted() {
		return ".zst.age"
	}
	return ".zst"
}

// Lookup returns the archived versions of name (a partial one included).
func (a *Archive) Lookup(ctx context.Context, name string) ([]Entry, error) {
	objs, err := a.Store.List(ctx, Prefix+name+".")
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, o := range objs {
		if e, ok := ParseKey(o.Key); ok && e.Name == name {
			e.Size, e.ModTime = o.Size, o.ModTime
			out = append(out, e)
		}
	}
	return out, nil
}

// List returns every archived file, in key order.
func (a *Archive) List(ctx context.Context) ([]Entry, error) {
	objs, err := a.Store.List(ctx, Prefix)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, o := range objs {
		if e, ok := ParseKey(o.Key); ok {
			e.Size, e.ModTime = o.Size, o.ModTime
			out = append(out, e)
		}
	}
	return out, nil
}

// PushResult says what Push did.
type PushResult struct {
	Name            string `json:"name"`
	Key             string `json:"key"`
	AlreadyArchived bool   `json:"already_archived"`
	// PushedAhead: an earlier call stored it ahead (--push-ahead), and
	// its record and the repository said so.
	PushedAhead bool `json:"pushed_ahead"`
}

// Push archives the file at path. It returns only once the file is stored
// durably, succeeds when the identical file is already archived, and fails
// with ErrConflict when a different one is.
func (a *Archive) Push(ctx context.Context, path string) (*PushResult, error) {
	name := filepath.Base(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, err)
	}
	if fi.Size() > inMemoryMax {
		return a.push(ctx, name, func() (string, []byte, error) { return a.encodeStream(f) })
	}
	data, release, err := mapFile(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, err)
	}
	defer release()
	return a.push(ctx, name, func() (string, []byte, error) {
		if a.beforeEncode != nil {
			a.beforeEncode()
		}
		sum, stored, err := a.encodeBuffer(data)
		if err == nil {
			// The hash and the frames read the mapping apart: a file
			// written meanwhile could give them different contents.
			err = unchanged(f, fi)
		}
		return sum, stored, err
	})
}

// unchanged reports an error when the open file's size, times or inode
// differ from before.
func unchanged(f *os.File, before os.FileInfo) error {
	after, err := f.Stat()
	if err != nil {
		return err
	}
	if recordOf("", after) != recordOf("", before) {
		return errors.New("the file changed while it was read")
	}
	return nil
}

// readFile reads f's first size bytes into memory.
func readFile(f *os.File, size int64) ([]byte, func(), error) {
	data := make([]byte, size)
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, nil, err
	}
	return data, func() {}, nil
}

// inMemoryMax is the largest file pushed from memory: a WAL segment of the
// default 16 MiB and up to 64 MiB. Larger segments (wal_segment_size goes
// to 1 GiB) stream through fixed buffers.
const inMemoryMax = 64 << 20

// PushData archives a file held in memory (a segment wal-receive completed).
func (a *Archive) PushData(ctx context.Context, name string, data []byte) (*PushResult, error) {
	return a.push(ctx, name, func() (string, []byte, error) { return a.encodeBuffer(data) })
}

// walWindow is the zstd window of archived WAL (see codec.Options.Window).
const walWindow = 512 << 10

func (a *Archive) codecOptions() codec.Options {
	o := a.Codec
	if o.Window == 0 {
		o.Window = walWindow
	}
	return o
}

// encodeBuffer hashes data while its frames are compressed, all at once.
func (a *Archive) encodeBuffer(data []byte) (string, []byte, error) {
	type hash struct {
		sum [sha256.Size]byte
		err error
	}
	hashed := make(chan hash, 1)
	go func() {
		debug.SetPanicOnFault(true)
		defer func() {
			if r := recover(); r != nil {
				hashed <- hash{err: codec.MemoryFault(r)}
			}
		}()
		hashed <- hash{sum: sha256.Sum256(data)}
	}()
	stored, err := codec.EncodeBuffer(data, a.Keys, a.codecOptions())
	h := <-hashed
	if err = errors.Join(err, h.err); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.sum[:])[:hashLen], stored, nil
}

// encodeStream compresses and encrypts r into memory (a compressed segment
// is a few MiB), hashing it on the way.
func (a *Archive) encodeStream(r io.Reader) (string, []byte, error) {
	h := sha256.New()
	var stored bytes.Buffer
	enc, err := codec.NewWriter(&stored, a.Keys, a.codecOptions())
	if err != nil {
		return "", nil, err
	}
	if _, err := io.Copy(enc, io.TeeReader(r, h)); err != nil {
		enc.Abort()
		return "", nil, err
	}
	if err := enc.Close(); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil))[:hashLen], stored.Bytes(), nil
}

// push encodes the file once, while the archive is asked in parallel what
// it holds under the name. Then one upload. Identical content always gets
// the same key, so a plain Put is safe when two pushers race with the same
// file.
func (a *Archive) push(ctx context.Context, name string, encode func() (string, []byte, error)) (*PushResult, error) {
	if !IsArchivable(name) {
		return nil, fmt.Errorf("wal-push %s: not a WAL segment, timeline history or backup history file name", name)
	}
	if !a.Keys.Encrypted() && !a.AllowUnencrypted {
		return nil, fmt.Errorf("wal-push %s: no age recipients configured (or allow unencrypted WAL explicitly)", name)
	}
	type lookup struct {
		entries []Entry
		err     error
	}
	existing := make(chan lookup, 1)
	go func() {
		e, err := a.Lookup(ctx, name)
		existing <- lookup{e, err}
	}()
	sum, stored, err := encode()
	found := <-existing
	if err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, err)
	}
	if found.err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, found.err)
	}
	res := &PushResult{Name: name, Key: Prefix + name + "." + sum + a.ext()}
	if dup, err := compareExisting(name, sum, found.entries); err != nil || dup {
		res.AlreadyArchived = dup
		if dup && err == nil && a.Signer != nil {
			// A crash between the signature and the file, or an archive
			// written before signing was set up: sign what is there.
			if _, serr := a.Store.Stat(ctx, SignatureKey(name, sum)); errors.Is(serr, storage.ErrNotExist) {
				err = a.sign(ctx, name, sum)
			} else {
				err = serr
			}
			if err != nil {
				return nil, fmt.Errorf("wal-push %s: signature: %w", name, err)
			}
		}
		return res, err
	}
	if a.beforeUpload != nil {
		if err := a.beforeUpload(); err != nil {
			return nil, fmt.Errorf("wal-push %s: %w", name, err)
		}
	}
	// The signature first: the file's key is what makes it archived.
	if err := a.sign(ctx, name, sum); err != nil {
		return nil, fmt.Errorf("wal-push %s: signature: %w", name, err)
	}
	if err := a.Store.Put(ctx, res.Key, bytes.NewReader(stored)); err != nil {
		return nil, fmt.Errorf("wal-push %s: %w", name, err)
	}
	// Two different files pushed at the very same moment both land, under
	// their two hashes: wal-fetch then refuses to choose and verify reports
	// the conflict, loudly, before a restore depends on it.
	return res, nil
}

// compareExisting reports whether the same file is archived, and refuses
// a different one under the name.
func compareExisting(name, sum string, entries []Entry) (bool, error) {
	same := false
	for _, e := range entries {
		switch {
		case e.Partial:
		case e.Hash == sum:
			same = true
		default:
			return false, fmt.Errorf("wal-push %s: %w: archived SHA-256 %s, this file %s (prefixes)", name, ErrConflict, e.Hash[:12], sum[:12])
		}
	}
	return same, nil
}

// put streams r through the codec into key.
func (a *Archive) put(ctx context.Context, key string, r io.Reader) error {
	pr, pw := io.Pipe()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		enc, err := codec.NewWriter(pw, a.Keys, a.codecOptions())
		if err != nil {
			pw.CloseWithError(err)
			return err
		}
		if _, err := io.Copy(enc, r); err != nil {
			enc.Abort()
			pw.CloseWithError(err)
			return err
		}
		if err := enc.Close(); err != nil {
			pw.CloseWithError(err)
			return err
		}
		return pw.Close()
	})
	g.Go(func() error {
		err := a.Store.Put(gctx, key, pr)
		pr.CloseWithError(err)
		return err
	})
	return g.Wait()
}

// PutPartial stores the received part of an unfinished segment, replacing
// the previous partial copy. Its signature (named by the content's hash,
// so that a reader never pairs a copy with another copy's signature) is
// stored first; the previous copy's signature is removed after.
func (a *Archive) PutPartial(ctx context.Context, name string, data []byte) error {
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])[:hashLen]
	if err := a.sign(ctx, name+streamTag, hash); err != nil {
		return fmt.Errorf("sign partial %s: %w", name, err)
	}
	if err := a.put(ctx, Prefix+name+".partial"+a.ext(), bytes.NewReader(data)); err != nil {
		return err
	}
	if a.Signer != nil {
		return a.deletePartialSignatures(ctx, name, hash)
	}
	return nil
}

// deletePartialSignatures removes the signatures of name's partial copies
// but the one of hash ("" removes all).
func (a *Archive) deletePartialSignatures(ctx context.Context, name, keep string) error {
	objs, err := a.Store.List(ctx, Prefix+name+streamTag+".")
	if err != nil {
		return err
	}
	for _, o := range objs {
		if strings.HasSuffix(o.Key, ".sig") && (keep == "" || o.Key != SignatureKey(name+streamTag, keep)) {
			if err := a.Store.Delete(ctx, o.Key); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeletePartial removes the partial copy once the whole segment is archived.
func (a *Archive) DeletePartial(ctx context.Context, name string) error {
	for _, ext := range []string{".zst.age", ".zst"} {
		if err := a.Store.Delete(ctx, Prefix+name+".partial"+ext); err != nil {
			return err
		}
	}
	return a.deletePartialSignatures(ctx, name, "")
}

// Fetch writes the archived file name to dest (atomically: a temporary
// file renamed into place). A segment only archived partially is served
// padded with zeros to the segment size, as pg_receivewal's .partial files
// are used. It returns ErrNotFound when the archive has no such file.
func (a *Archive) Fetch(ctx context.Context, name, dest string) error {
	return a.fetch(ctx, name, dest, true)
}

func (a *Archive) fetch(ctx context.Context, name, dest string, allowPartial bool) error {
	entries, err := a.Lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	var full, partial *Entry
	for i := range entries {
		e := &entries[i]
		switch {
		case e.Partial:
			partial = e
		case full == nil:
			full = e
		case full.Hash != e.Hash:
			return fmt.Errorf("wal-fetch %s: %w", name, ErrConflict)
		}
	}
	chosen := full
	if chosen == nil && allowPartial {
		chosen = partial
	}
	if chosen == nil {
		return ErrNotFound
	}
	tmp := dest + ".drctl-tmp"
	if err := a.fetchTo(ctx, *chosen, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	return nil
}

func (a *Archive) fetchTo(ctx context.Context, e Entry, path string) error {
	rc, err := a.Store.Get(ctx, e.Key)
	if err != nil {
		return err
	}
	defer rc.Close()
	dec, err := codec.NewReader(rc, strings.HasSuffix(e.Key, ".age"), a.Keys)
	if err != nil {
		return err
	}
	defer dec.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), dec)
	if err != nil {
		return fmt.Errorf("%s: %w", e.Key, err)
	}
	got := hex.EncodeToString(h.Sum(nil))[:hashLen]
	if a.Verifier != nil {
		signedName := e.Name
		if e.Partial {
			signedName += streamTag
		}
		if _, err := a.CheckSignature(ctx, signedName, got); err != nil {
			return err
		}
	}
	if e.Partial {
		size := a.SegmentSize
		if size == 0 {
			size = DefaultSegmentSize
		}
		if n < size {
			if err := f.Truncate(size); err != nil {
				return err
			}
		}
	} else if got != e.Hash {
		return fmt.Errorf("%s: content SHA-256 %s does not match its name", e.Key, got)
	}
	return f.Close()
}
