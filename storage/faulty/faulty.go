// Package faulty wraps a store to inject the failures real object stores
// produce: errors part-way through an upload or a download, truncated
// reads, and slow requests. Engine tests use it for the edges a healthy
// server does not reach.
package faulty

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// ErrInjected is the error the wrapper injects.
var ErrInjected = errors.New("injected storage fault")

// Store wraps a storage.Store. Zero-valued fields inject nothing.
type Store struct {
	storage.Store

	mu sync.Mutex
	// FailPutAfter makes a Put fail once it has read this many bytes (>0).
	FailPutAfter int64
	// FailGetAfter makes a Get's reader fail after this many bytes (>0).
	FailGetAfter int64
	// TruncateGetAt makes a Get's reader end early, without error (>0).
	TruncateGetAt int64
	// Latency is added before every call.
	Latency time.Duration
	// Puts counts Put and PutIfAbsent calls.
	Puts int
	// Fail, when set, is asked before every call ("Put", "PutIfAbsent",
	// "Get", "Stat", "List", "Delete") and the call fails with the error
	// it returns, if any, without reaching the store.
	Fail func(method, key string) error
}

// SetFail sets Fail while calls may be running.
func (s *Store) SetFail(f func(method, key string) error) {
	s.mu.Lock()
	s.Fail = f
	s.mu.Unlock()
}

func (s *Store) fail(method, key string) error {
	s.mu.Lock()
	f := s.Fail
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(method, key)
}

// Stat injects Fail.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := s.delay(ctx); err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := s.fail("Stat", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	return s.Store.Stat(ctx, key)
}

// List injects Fail.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	if err := s.delay(ctx); err != nil {
		return nil, err
	}
	if err := s.fail("List", prefix); err != nil {
		return nil, err
	}
	return s.Store.List(ctx, prefix)
}

// Delete injects Fail.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.delay(ctx); err != nil {
		return err
	}
	if err := s.fail("Delete", key); err != nil {
		return err
	}
	return s.Store.Delete(ctx, key)
}

func (s *Store) settings() (failPut, failGet, trunc int64, lat time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.FailPutAfter, s.FailGetAfter, s.TruncateGetAt, s.Latency
}

func (s *Store) delay(ctx context.Context) error {
	_, _, _, lat := s.settings()
	if lat <= 0 {
		return ctx.Err()
	}
	select {
	case <-time.After(lat):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Put injects FailPutAfter.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	if err := s.fail("Put", key); err != nil {
		return err
	}
	return s.put(ctx, key, r, s.Store.Put)
}

// PutIfAbsent injects FailPutAfter.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if err := s.fail("PutIfAbsent", key); err != nil {
		return err
	}
	return s.put(ctx, key, r, s.Store.PutIfAbsent)
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, next func(context.Context, string, io.Reader) error) error {
	if err := s.delay(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.Puts++
	s.mu.Unlock()
	if n, _, _, _ := s.settings(); n > 0 {
		r = &failAfter{r: r, left: n}
	}
	return next(ctx, key, r)
}

// Get injects FailGetAfter and TruncateGetAt.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := s.delay(ctx); err != nil {
		return nil, err
	}
	if err := s.fail("Get", key); err != nil {
		return nil, err
	}
	rc, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	_, failGet, trunc, _ := s.settings()
	switch {
	case failGet > 0:
		return readCloser{&failAfter{r: rc, left: failGet}, rc}, nil
	case trunc > 0:
		return readCloser{io.LimitReader(rc, trunc), rc}, nil
	}
	return rc, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

type failAfter struct {
	r    io.Reader
	left int64
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, ErrInjected
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= int64(n)
	return n, err
}
