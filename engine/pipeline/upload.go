// Package pipeline streams data into a repository object through the
// codec: writes are compressed, encrypted, hashed and uploaded as they
// come, with one io.Pipe at the upload boundary and memory bounded by the
// store's part size.
package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/storage"
)

// Upload is one object being written. Write to it, then call exactly one
// of Finish (commit the object) or Abort (leave nothing visible).
type Upload struct {
	enc  *codec.Writer
	pw   *io.PipeWriter
	done chan error
	cr   *countingReader
	key  string
	st   storage.Store
}

// Start begins uploading key. The store's Put runs in its own goroutine,
// which Finish and Abort always wait for.
func Start(ctx context.Context, st storage.Store, key string, keys *codec.Keys, opt codec.Options) (*Upload, error) {
	pr, pw := io.Pipe()
	u := &Upload{pw: pw, done: make(chan error, 1), key: key, st: st,
		cr: &countingReader{r: pr, h: sha256.New()}}
	// The reader must run before the encoder exists: age writes its header
	// into the pipe as soon as it is created.
	go func() {
		err := st.Put(ctx, key, u.cr)
		pr.CloseWithError(err) // unblock the writer when the store gave up
		u.done <- err
	}()
	enc, err := codec.NewWriter(pw, keys, opt)
	if err != nil {
		pw.CloseWithError(err)
		<-u.done
		return nil, err
	}
	u.enc = enc
	return u, nil
}

// Write compresses and encrypts p into the upload.
func (u *Upload) Write(p []byte) (int, error) {
	n, err := u.enc.Write(p)
	if err != nil {
		return n, fmt.Errorf("upload %s: %w", u.key, err)
	}
	return n, nil
}

// ReadFrom lets io.Copy hand the encoder large blocks.
func (u *Upload) ReadFrom(r io.Reader) (int64, error) {
	n, err := u.enc.ReadFrom(r)
	if err != nil {
		return n, fmt.Errorf("upload %s: %w", u.key, err)
	}
	return n, nil
}

// Finish flushes the codec, waits for the store to make the object
// durable, checks its stored size and returns its description.
func (u *Upload) Finish(ctx context.Context, role string) (catalog.Object, error) {
	err := u.enc.Close()
	if err != nil {
		u.pw.CloseWithError(err)
	} else {
		u.pw.Close()
	}
	if perr := <-u.done; err == nil {
		err = perr
	}
	if err != nil {
		return catalog.Object{}, fmt.Errorf("upload %s: %w", u.key, err)
	}
	info, err := u.st.Stat(ctx, u.key)
	if err != nil {
		return catalog.Object{}, fmt.Errorf("check stored %s: %w", u.key, err)
	}
	if info.Size != u.cr.n {
		return catalog.Object{}, fmt.Errorf("stored %s has %d bytes, %d were sent", u.key, info.Size, u.cr.n)
	}
	return catalog.Object{Key: u.key, Role: role, Size: u.cr.n, RawSize: u.enc.RawBytes(),
		SHA256: hex.EncodeToString(u.cr.h.Sum(nil))}, nil
}

// Abort fails the upload with cause: the store never makes it visible.
func (u *Upload) Abort(cause error) {
	u.enc.Abort()
	u.pw.CloseWithError(cause)
	<-u.done
}

// countingReader hashes and counts what the store reads: the stored bytes.
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
