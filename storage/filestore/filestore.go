// Package filestore is the file:// repository backend: objects are files
// under a root directory, written to a temporary file, fsynced, and renamed
// into place so that a reader sees a whole object or none.
package filestore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/drctl/drctl/storage"
)

// tmpDir holds objects being written. It is never listed.
const tmpDir = ".drctl-tmp"

// Store is a repository in a local directory.
type Store struct {
	root string
}

// Open returns a store rooted at dir, creating the directory if needed.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file repository: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("file repository %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o750); err != nil {
		return nil, fmt.Errorf("file repository %s: %w", abs, err)
	}
	return &Store{root: abs}, nil
}

func (s *Store) String() string { return "file://" + s.root }

func (s *Store) path(key string) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	if key == tmpDir || strings.HasPrefix(key, tmpDir+"/") {
		return "", fmt.Errorf("object key %q is reserved", key)
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put writes r to a temporary file and renames it over key.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, false)
}

// PutIfAbsent links the finished temporary file to key; link(2) fails
// atomically when key exists, so two writers cannot both win.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, true)
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, exclusive bool) error {
	final, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := s.writeTemp(ctx, key, r)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp) // no-op after a rename
	dir := filepath.Dir(final)
	if err := s.mkdirAll(dir); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if exclusive {
		if err := os.Link(tmp, final); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("put %s: %w", key, storage.ErrExists)
			}
			return fmt.Errorf("put %s: %w", key, err)
		}
	} else if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// tempName names a temporary file: random, then the key it becomes (when
// it fits a file name), so that a cleanup can ask whose it is.
func tempName(key string) (string, error) {
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	name := hex.EncodeToString(rnd[:])
	if enc := base64.RawURLEncoding.EncodeToString([]byte(key)); len(enc) <= 200 {
		name += "." + enc
	}
	return name, nil
}

// tempKey is the key a temporary file was to become, "" when unknown.
func tempKey(name string) string {
	_, enc, ok := strings.Cut(name, ".")
	if !ok {
		return ""
	}
	key, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || storage.ValidKey(string(key)) != nil {
		return ""
	}
	return string(key)
}

func (s *Store) writeTemp(ctx context.Context, key string, r io.Reader) (string, error) {
	base, err := tempName(key)
	if err != nil {
		return "", err
	}
	name := filepath.Join(s.root, tmpDir, base)
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(f, ctxReader{ctx: ctx, r: r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// mkdirAll creates dir and fsyncs each parent whose entries it changed, so
// that the object's directory survives a crash along with the object.
func (s *Store) mkdirAll(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir && strings.HasPrefix(parent, s.root) {
		if err := s.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	// Some filesystems cannot fsync a directory; the rename is still atomic.
	if errors.Is(err, syscall.EINVAL) {
		return nil
	}
	return err
}

// Get opens the object's file.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, notExist(key, err)
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotExist)
	}
	return f, nil
}

// Stat returns the file's size and modification time.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return storage.ObjectInfo{}, notExist(key, err)
	}
	if fi.IsDir() {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotExist)
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the directory below the prefix's last slash.
// ListDirs returns the names of the directories directly under prefix
// (which ends with a slash), sorted.
func (s *Store) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	if err := storage.ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(strings.TrimSuffix(prefix, "/"))))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !(prefix == "" && e.Name() == tmpDir) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	base := s.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		base = filepath.Join(s.root, filepath.FromSlash(prefix[:i]))
	}
	var out []storage.ObjectInfo
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		rel, _ := filepath.Rel(s.root, p)
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if key == tmpDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(key, prefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		out = append(out, storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the file and any directories the removal left empty.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	for dir := filepath.Dir(p); dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty, or gone
		}
	}
	return nil
}

// RemoveStaleTemp deletes the temporary files of killed writers for which
// dead reports true, given the key each was to become (kept in its name).
// It returns how many it removed.
func (s *Store) RemoveStaleTemp(_ context.Context, dead func(key string, since time.Time) bool) (int, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, tmpDir))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !dead(tempKey(e.Name()), fi.ModTime()) {
			continue
		}
		if os.Remove(filepath.Join(s.root, tmpDir, e.Name())) == nil {
			n++
		}
	}
	return n, nil
}

func notExist(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%s: %w", key, storage.ErrNotExist)
	}
	return fmt.Errorf("%s: %w", key, err)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
