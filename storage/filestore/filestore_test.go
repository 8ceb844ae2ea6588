package filestore_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := filestore.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storagetest.Options{})
}

// A cleanup is told which key each temporary file was to become, so it
// can ask whether that writer is alive; only what it calls dead goes.
func TestRemoveStaleTemp(t *testing.T) {
	dir := t.TempDir()
	s, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".drctl-tmp", "leftover")
	if err := os.WriteFile(stale, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A writer in progress: its temp file exists until the Put ends.
	pr, pw := io.Pipe()
	putDone := make(chan error, 1)
	go func() { putDone <- s.Put(t.Context(), "backups/20261126T000000Z-abcdef/base.tar.zst.age", pr) }()
	pw.Write([]byte("partial"))
	seen := map[string]bool{}
	if n, err := s.RemoveStaleTemp(t.Context(), func(key string, since time.Time) bool {
		seen[key] = true
		return key == ""
	}); err != nil || n != 1 {
		t.Fatalf("removed %d, %v; want only the leftover without a key", n, err)
	}
	if !seen["backups/20261126T000000Z-abcdef/base.tar.zst.age"] || !seen[""] || len(seen) != 2 {
		t.Fatalf("keys asked about: %v", seen)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale file still there: %v", err)
	}
	pw.Write([]byte(" and the rest"))
	pw.Close()
	if err := <-putDone; err != nil {
		t.Fatalf("the live writer's Put failed: %v", err)
	}
}
