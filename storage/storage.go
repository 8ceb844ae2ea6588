// Package storage defines the small object-store interface every drctl
// repository backend implements, and the errors they share.
//
// A backend stores immutable objects under slash-separated keys. Put makes an
// object visible only once it is complete and durable: a reader never sees a
// partial object, and a Put that fails or is cancelled leaves nothing visible.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotExist is returned (wrapped) by Get, Stat and Delete-less lookups when
// the key does not name an object. Check it with errors.Is.
var ErrNotExist = errors.New("object does not exist")

// ErrExists is returned (wrapped) by PutIfAbsent when the key is taken.
var ErrExists = errors.New("object already exists")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is an object store holding a drctl repository.
type Store interface {
	// Put streams r, of unknown length, to key. The object becomes visible
	// only when r is exhausted and the data is durable; an error or a
	// cancelled ctx leaves no visible object and no half-written one. An
	// existing object under key is replaced.
	Put(ctx context.Context, key string, r io.Reader) error

	// PutIfAbsent is Put that fails with ErrExists, writing nothing, when
	// key already names an object. Two racing callers cannot both succeed.
	PutIfAbsent(ctx context.Context, key string, r io.Reader) error

	// Get opens the object for reading. The caller closes the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// Stat returns the object's size and modification time.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List returns every object whose key starts with prefix, sorted by key.
	// An object whose Put has returned is always listed.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)

	// Delete removes the object. Deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error

	// String describes the store for messages, without credentials.
	String() string
}

// DirLister is implemented by stores that can list the "directories"
// directly under a prefix (which ends with a slash) in few requests — S3's
// delimiter listing — without listing every object below them: the names,
// sorted. A name is listed while any object is below it.
type DirLister interface {
	ListDirs(ctx context.Context, prefix string) ([]string, error)
}

// ValidKey reports whether key is acceptable to every backend: non-empty,
// relative, slash-separated, with no empty, "." or ".." segments.
func ValidKey(key string) error {
	if key == "" {
		return errors.New("empty object key")
	}
	if key[0] == '/' || key[len(key)-1] == '/' {
		return errors.New("object key " + quote(key) + " must not start or end with /")
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i == len(key) || key[i] == '/' {
			seg := key[start:i]
			if seg == "" || seg == "." || seg == ".." {
				return errors.New("object key " + quote(key) + " has an empty, . or .. segment")
			}
			start = i + 1
			continue
		}
		if key[i] < 0x20 || key[i] == 0x7f || key[i] == '\\' {
			return errors.New("object key " + quote(key) + " has a control character or backslash")
		}
	}
	return nil
}

func quote(s string) string { return "\"" + s + "\"" }

// StaleCleaner is implemented by stores that can remove what killed writers
// left behind: temporary files, unfinished multipart uploads. Such leftovers
// are never visible as objects; cleaning them only frees space.
type StaleCleaner interface {
	//
	// RemoveStaleTemp removes the leftovers for which dead reports true:
	// key is the object the leftover was to become ("" when the store
	// cannot tell), since when it was begun or last written. The caller
	// decides from the writers' leases; a store never judges by age alone.
	RemoveStaleTemp(ctx context.Context, dead func(key string, since time.Time) bool) (int, error)
}
