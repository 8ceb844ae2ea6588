package logical_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/restore"
	rlogical "github.com/drctl/drctl/restore/logical"
)

// pg_restore runs the table of contents' SQL as it reads it, and SQL can
// commit: a stored object swapped for another (which a signed manifest
// does not prevent, its hash being checked only at the end) must be
// refused before pg_restore starts. The manifest records the hash of the
// table of contents; backups without it are checked whole first.
func TestTableOfContentsIsCheckedBeforePgRestoreRuns(t *testing.T) {
	f := setup(t)
	obj, _ := f.m.Object(catalog.RoleDump)
	// The hash in the manifest is the plaintext header and table of
	// contents, as pgarchive reads them.
	stream, err := restore.OpenObject(t.Context(), f.st, f.m, obj, f.keys.Codec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	a := pgarchive.NewReader(stream)
	a.Pass = h
	if err := a.ReadTOC(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if got := hex.EncodeToString(h.Sum(nil)); obj.TOCSHA256 != got {
		t.Fatalf("manifest toc_sha256 %q, the table of contents hashes to %s", obj.TOCSHA256, got)
	}

	// Another backup's object in its place, made to the size the manifest
	// says as a forger would: unencrypted here, padded with a zstd
	// skippable frame, which decoders pass over (with encryption, a forger
	// encrypts to the public recipients just the same).
	plain := logical.BackupOptions{Store: f.st, DSN: f.dsnOf("shop"), Keys: &codec.Keys{}, AllowUnencrypted: true}
	m, err := logical.Backup(t.Context(), plain)
	if err != nil {
		t.Fatal(err)
	}
	obj, _ = m.Object(catalog.RoleDump)
	f.pg.Exec(t, "postgres", "CREATE DATABASE other")
	f.pg.Exec(t, "other", "CREATE TABLE intruder (id int)")
	plain.DSN = f.dsnOf("other")
	other, err := logical.Backup(t.Context(), plain)
	if err != nil {
		t.Fatal(err)
	}
	otherObj, _ := other.Object(catalog.RoleDump)
	path := filepath.Join(f.dir, filepath.FromSlash(obj.Key))
	good, _ := os.ReadFile(path)
	swapped, _ := os.ReadFile(filepath.Join(f.dir, filepath.FromSlash(otherObj.Key)))
	pad := len(good) - len(swapped) - 8
	if pad < 0 {
		t.Fatalf("the other dump (%d bytes) is not smaller than the original (%d)", len(swapped), len(good))
	}
	swapped = binary.LittleEndian.AppendUint32(swapped, 0x184D2A50)
	swapped = binary.LittleEndian.AppendUint32(swapped, uint32(pad))
	swapped = append(swapped, make([]byte, pad)...)
	os.WriteFile(path, swapped, 0o640)
	defer os.WriteFile(path, good, 0o640)

	// pg_restore is a program that says it ran: it must not.
	ran := filepath.Join(t.TempDir(), "ran")
	fake := filepath.Join(t.TempDir(), "pg_restore")
	os.WriteFile(fake, []byte("#!/bin/sh\ntouch "+ran+"\ncat >/dev/null\nexit 1\n"), 0o755)
	restoreWith := func(m *catalog.Manifest) error {
		_, err := rlogical.Restore(t.Context(), rlogical.Options{Store: f.st, Manifest: m, Keys: f.keys.Codec(),
			Target: f.dsnOf("swapped"), PgRestore: fake})
		return err
	}
	if err := restoreWith(m); !errors.Is(err, restore.ErrCorrupt) || !strings.Contains(err.Error(), "table of contents") {
		t.Fatalf("a swapped object: %v, want its table of contents refused", err)
	}
	// A manifest from before toc_sha256: the object is checked whole first.
	legacy := *m
	legacy.Objects = []catalog.Object{obj}
	legacy.Objects[0].TOCSHA256 = ""
	if err := restoreWith(&legacy); !errors.Is(err, restore.ErrCorrupt) {
		t.Fatalf("a swapped object under a manifest without toc_sha256: %v, want the corruption named", err)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("pg_restore was started on a table of contents nobody vouched for")
	}
	if f.pg.DatabaseExists(t, "swapped") {
		t.Fatal("the refused restore created its database")
	}
	// The legacy path restores a good object.
	os.WriteFile(path, good, 0o640)
	if _, err := rlogical.Restore(t.Context(), rlogical.Options{Store: f.st, Manifest: &legacy, Keys: f.keys.Codec(), Target: f.dsnOf("legacy")}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.pg.DumpPlain(t, "legacy"), f.pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("restored through the legacy path, the database differs")
	}
}
