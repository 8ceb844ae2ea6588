package storage_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/storage/storagetest"
)

// A store opened in the background behaves as the store itself.
func TestOpeningConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		dir := t.TempDir()
		o := storage.OpenInBackground("a directory", func() (storage.Store, error) {
			time.Sleep(10 * time.Millisecond) // calls come before the store
			return filestore.Open(dir)
		})
		// Opened before the directory is removed (cleanups run last first),
		// also by a test that never calls the store.
		t.Cleanup(func() { o.Wait(context.Background()) })
		return o
	}, storagetest.Options{})
}

// A failed open is every call's error, and a cancelled caller stops
// waiting for an open that hangs.
func TestOpeningFails(t *testing.T) {
	ctx := context.Background()
	bad := storage.OpenInBackground("s3://bucket", func() (storage.Store, error) {
		return nil, errors.New("s3 repository: no usable AWS credentials")
	})
	_, err := bad.List(ctx, "wal/")
	if oe := (*storage.OpenError)(nil); !errors.As(err, &oe) || oe.Error() != "s3 repository: no usable AWS credentials" {
		t.Fatalf("List on a failed open: %v", err)
	}
	if err := bad.Put(ctx, "k", strings.NewReader("x")); err == nil {
		t.Fatal("Put on a failed open succeeded")
	}
	if bad.String() != "s3://bucket" {
		t.Fatalf("String() = %q", bad.String())
	}
	release := make(chan struct{})
	defer close(release)
	hung := storage.OpenInBackground("hung", func() (storage.Store, error) {
		<-release
		return nil, errors.New("never")
	})
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := hung.Stat(cctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stat while the open hangs: %v", err)
	}
}
