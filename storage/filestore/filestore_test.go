package filestore_test

import (
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
	now := time.Now()
	if n, err := s.RemoveStaleTemp(t.Context(), time.Hour, now); err != nil || n != 0 {
		t.Fatalf("fresh temp file removed: %d, %v", n, err)
	}
	if n, err := s.RemoveStaleTemp(t.Context(), time.Hour, now.Add(2*time.Hour)); err != nil || n != 1 {
		t.Fatalf("stale temp file not removed: %d, %v", n, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale file still there: %v", err)
	}
}
