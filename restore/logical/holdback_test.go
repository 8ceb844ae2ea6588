package logical_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/restore"
	rlogical "github.com/drctl/drctl/restore/logical"
	"github.com/drctl/drctl/storage/faulty"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/testrig"
)

// The last MiB of plaintext is held back from pg_restore until the whole
// stored object has been checked. With a dump of several MiB, damaged
// early, late and in its very last byte — and, unencrypted, where zstd has
// already let every byte of plaintext through before its frame checksum
// fails — a --clean restore leaves the target as it was, and the error is
// the damage, not something else.
func TestHoldBackKeepsDamagedRestoresFromCommitting(t *testing.T) {
	f := setup(t)
	f.pg.Exec(t, "postgres", "CREATE DATABASE big")
	f.pg.Exec(t, "big", "CREATE TABLE rows AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS v FROM generate_series(1, 120000) g")
	f.pg.Exec(t, "postgres", "CREATE DATABASE target")
	f.pg.Exec(t, "target", "CREATE TABLE keepme (id int); INSERT INTO keepme VALUES (7)")
	before := f.pg.DumpPlain(t, "target")
	dir := t.TempDir()
	st, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		keys *codec.Keys
	}{{"encrypted", f.keys.Codec()}, {"unencrypted", &codec.Keys{}}} {
		m, err := logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: f.dsnOf("big"), Keys: c.keys, AllowUnencrypted: true})
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := m.Object(catalog.RoleDump)
		if obj.RawSize < 4<<20 {
			t.Fatalf("the dump is %d bytes: too small to test the hold-back of 1 MiB", obj.RawSize)
		}
		path := filepath.Join(dir, filepath.FromSlash(obj.Key))
		good, _ := os.ReadFile(path)
		restoreInto := func(st *faulty.Store) error {
			_, err := rlogical.Restore(t.Context(), rlogical.Options{Store: st, Manifest: m, Keys: f.keys.Codec(), Target: f.dsnOf("target"), Clean: true})
			return err
		}
		for _, at := range []int64{obj.Size / 10, obj.Size * 9 / 10, obj.Size - 1} {
			// A flipped byte: the error is the object's damage.
			bad := append([]byte(nil), good...)
			bad[at] ^= 0x20
			os.WriteFile(path, bad, 0o640)
			err := restoreInto(&faulty.Store{Store: st})
			os.WriteFile(path, good, 0o640)
			if !errors.Is(err, restore.ErrCorrupt) {
				t.Fatalf("%s, byte %d of %d flipped: %v, want the corruption named", c.name, at, obj.Size, err)
			}
			if after := f.pg.DumpPlain(t, "target"); after != before {
				t.Fatalf("%s, byte %d of %d flipped: the target changed: %s", c.name, at, obj.Size, testrig.FirstDiff(after, before))
			}
			// A download that fails there: the error is the injected one.
			err = restoreInto(&faulty.Store{Store: st, FailGetAfter: at})
			if !errors.Is(err, faulty.ErrInjected) {
				t.Fatalf("%s, download failing at %d of %d: %v, want the injected fault", c.name, at, obj.Size, err)
			}
			if after := f.pg.DumpPlain(t, "target"); after != before {
				t.Fatalf("%s, download failing at %d: the target changed", c.name, at)
			}
		}
	}
}

// A selective restore reads only part of the dump: pg_restore would finish
// and commit after its last table's data, long before the object's end.
// drctl passes it only the blocks it reads, holding back the last of them,
// so a dump damaged after the chosen table's data still commits nothing.
func TestSelectiveRestoreWaitsForTheWholeObject(t *testing.T) {
	f := setup(t)
	f.pg.Exec(t, "postgres", "CREATE DATABASE parts")
	// "a_first" is dumped before the big table.
	f.pg.Exec(t, "parts", "CREATE TABLE a_first (id int PRIMARY KEY); INSERT INTO a_first SELECT generate_series(1, 1000)")
	f.pg.Exec(t, "parts", "CREATE TABLE z_rows AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS v FROM generate_series(1, 120000) g")
	dir := t.TempDir()
	st, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: f.dsnOf("parts"), Keys: f.keys.Codec()})
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := m.Object(catalog.RoleDump)
	path := filepath.Join(dir, filepath.FromSlash(obj.Key))
	good, _ := os.ReadFile(path)
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 0x20
	os.WriteFile(path, bad, 0o640)
	opt := rlogical.Options{Store: st, Manifest: m, Keys: f.keys.Codec(), Target: f.dsnOf("one_table"),
		Selection: rlogical.Selection{Tables: []string{"a_first"}}}
	if _, err := rlogical.Restore(t.Context(), opt); !errors.Is(err, restore.ErrCorrupt) || strings.Contains(err.Error(), "finished before") {
		t.Fatalf("--table a_first from a dump damaged at its end: %v, want the corruption named before anything committed", err)
	}
	if f.pg.DatabaseExists(t, "one_table") {
		t.Fatal("the failed selective restore left its database")
	}
	os.WriteFile(path, good, 0o640)
	res, err := rlogical.Restore(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if n := f.pg.QueryInt(t, "one_table", "SELECT count(*) FROM a_first"); n != 1000 || len(res.Tables) != 1 {
		t.Fatalf("restored %d rows, tables %v", n, res.Tables)
	}
	if f.pg.QueryInt(t, "one_table", "SELECT count(*) FROM pg_tables WHERE tablename = 'z_rows'") != 0 {
		t.Fatal("--table a_first restored z_rows too")
	}
}
