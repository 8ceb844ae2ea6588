package storage

import (
	"context"
	"io"
)

// Opening is a Store whose backend is still being opened: the open starts
// at once, in the background, and each call waits for it. A command that
// has other work first (wal-push compresses the segment) overlaps the two:
// loading an S3 client's configuration costs milliseconds that
// archive_command pays once per segment.
//
// It implements only Store: optional capabilities of the backend (DirLister,
// StaleCleaner...) are not seen through it; use Wait for those.
type Opening struct {
	name  string
	done  chan struct{}
	store Store
	err   error
}

// OpenInBackground starts open and returns the Store that waits for it;
// name describes the store until then. A failed open is every call's error.
func OpenInBackground(name string, open func() (Store, error)) *Opening {
	o := &Opening{name: name, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		o.store, o.err = open()
		if o.err != nil {
			o.err = &OpenError{Err: o.err}
		}
	}()
	return o
}

// OpenError is a failed open, as every call of an Opening reports it: a
// caller that wraps its errors with the object it worked on can find it
// and report the repository's problem as it is.
type OpenError struct{ Err error }

func (e *OpenError) Error() string { return e.Err.Error() }
func (e *OpenError) Unwrap() error { return e.Err }

// Wait returns the opened store, or why it could not be opened.
func (o *Opening) Wait(ctx context.Context) (Store, error) {
	select {
	case <-o.done:
		return o.store, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (o *Opening) Put(ctx context.Context, key string, r io.Reader) error {
	s, err := o.Wait(ctx)
	if err != nil {
		return err
	}
	return s.Put(ctx, key, r)
}

func (o *Opening) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	s, err := o.Wait(ctx)
	if err != nil {
		return err
	}
	return s.PutIfAbsent(ctx, key, r)
}

func (o *Opening) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	s, err := o.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, key)
}

func (o *Opening) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	s, err := o.Wait(ctx)
	if err != nil {
		return ObjectInfo{}, err
	}
	return s.Stat(ctx, key)
}

func (o *Opening) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	s, err := o.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return s.List(ctx, prefix)
}

func (o *Opening) Delete(ctx context.Context, key string) error {
	s, err := o.Wait(ctx)
	if err != nil {
		return err
	}
	return s.Delete(ctx, key)
}

func (o *Opening) String() string {
	select {
	case <-o.done:
		if o.store != nil {
			return o.store.String()
		}
	default:
	}
	return o.name
}
