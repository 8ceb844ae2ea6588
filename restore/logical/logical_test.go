package logical_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/restore"
	rlogical "github.com/drctl/drctl/restore/logical"
	"github.com/drctl/drctl/restore/verify"
	"github.com/drctl/drctl/storage/faulty"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/testrig"
)

type fixture struct {
	pg    *testrig.Postgres
	dir   string
	st    *filestore.Store
	keys  *testrig.Keys
	m     *catalog.Manifest
	dsnOf func(db string) *pgdsn.DSN
}

func setup(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{pg: testrig.StartPostgres(t), dir: t.TempDir()}
	var err error
	if f.st, err = filestore.Open(f.dir); err != nil {
		t.Fatal(err)
	}
	f.keys = testrig.NewKeys(t, t.TempDir())
	f.dsnOf = func(db string) *pgdsn.DSN {
		d, err := pgdsn.Parse(f.pg.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	f.pg.LoadAwkward(t, "shop", false)
	f.m, err = logical.Backup(t.Context(), logical.BackupOptions{Store: f.st, DSN: f.dsnOf("shop"), Keys: f.keys.Codec()})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) restore(t *testing.T, db string, clean bool) (*rlogical.Result, error) {
	return rlogical.Restore(t.Context(), rlogical.Options{
		Store: f.st, Manifest: f.m, Keys: f.keys.Codec(), Target: f.dsnOf(db), Clean: clean,
	})
}

func (f *fixture) flipByte(t *testing.T, at int64) string {
	t.Helper()
	obj, _ := f.m.Object(catalog.RoleDump)
	path := filepath.Join(f.dir, filepath.FromSlash(obj.Key))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case at < 0:
		at += int64(len(b))
	case at == 0:
		at = int64(len(b)) / 2
	}
	b[at] ^= 0x01
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
	return obj.Key
}

func TestVerifyGoodBackup(t *testing.T) {
	f := setup(t)
	rep, err := verify.Backup(t.Context(), verify.Options{Store: f.st, Keys: f.keys.Codec()}, f.m)
	if err != nil || !rep.OK {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	if rep.Objects[0].TOCEntries < 20 {
		t.Fatalf("table of contents has %d entries; the awkward schema has more", rep.Objects[0].TOCEntries)
	}
}

// A flipped byte anywhere (the middle, the last chunk) fails verify and
// restore, naming the object, and leaves no half-restored database.
func TestFlippedByte(t *testing.T) {
	for _, pos := range []struct {
		name string
		at   int64
	}{{"middle", 0}, {"last-chunk", -10}} {
		t.Run(pos.name, func(t *testing.T) {
			f := setup(t)
			key := f.flipByte(t, pos.at)
			rep, err := verify.Backup(t.Context(), verify.Options{Store: f.st, Keys: f.keys.Codec()}, f.m)
			if !errors.Is(err, restore.ErrCorrupt) || !strings.Contains(err.Error(), key) || rep.OK {
				t.Fatalf("verify of a flipped byte: %v (report ok=%v)", err, rep != nil && rep.OK)
			}
			_, err = f.restore(t, "shop_restored", false)
			if !errors.Is(err, restore.ErrCorrupt) || !strings.Contains(err.Error(), key) {
				t.Fatalf("restore of a flipped byte: %v", err)
			}
			if f.pg.DatabaseExists(t, "shop_restored") {
				t.Fatal("a failed restore left the database it created")
			}
		})
	}
}

// A download that breaks or ends early fails the restore; pg_restore's
// single transaction leaves an existing target untouched.
func TestBrokenDownloadLeavesTargetUntouched(t *testing.T) {
	f := setup(t)
	f.pg.Exec(t, "postgres", "CREATE DATABASE target")
	f.pg.Exec(t, "target", "CREATE TABLE keepme (id int); INSERT INTO keepme VALUES (7)")
	before := f.pg.DumpPlain(t, "target")
	obj, _ := f.m.Object(catalog.RoleDump)
	for _, c := range []struct {
		st   *faulty.Store
		want error
	}{
		{&faulty.Store{Store: f.st, FailGetAfter: obj.Size / 2}, faulty.ErrInjected},
		// A download that ends early without an error is a damaged object.
		{&faulty.Store{Store: f.st, TruncateGetAt: obj.Size - 100}, restore.ErrCorrupt},
	} {
		_, err := rlogical.Restore(t.Context(), rlogical.Options{
			Store: c.st, Manifest: f.m, Keys: f.keys.Codec(), Target: f.dsnOf("target"), Clean: true,
		})
		if !errors.Is(err, c.want) {
			t.Fatalf("restore from a broken download: %v, want %v", err, c.want)
		}
		if after := f.pg.DumpPlain(t, "target"); after != before {
			t.Fatalf("a failed --clean restore changed the target: %s", testrig.FirstDiff(after, before))
		}
	}
}

func TestNonEmptyTarget(t *testing.T) {
	f := setup(t)
	f.pg.Exec(t, "postgres", "CREATE DATABASE busy")
	f.pg.Exec(t, "busy", "CREATE TABLE unrelated (id int)")
	_, err := f.restore(t, "busy", false)
	if !errors.Is(err, rlogical.ErrNotEmpty) {
		t.Fatalf("restore into a non-empty database: %v", err)
	}
	// --clean replaces the backup's objects.
	if _, err := f.restore(t, "busy", true); err != nil {
		t.Fatalf("--clean restore: %v", err)
	}
	if n := f.pg.QueryInt(t, "busy", "SELECT count(*) FROM inventory.stock_moves"); n != 5000 {
		t.Fatalf("after --clean restore: %d stock moves", n)
	}
	// And again over itself: --clean is repeatable.
	if _, err := f.restore(t, "busy", true); err != nil {
		t.Fatalf("second --clean restore: %v", err)
	}
	if got, want := f.pg.DumpPlain(t, "busy", "--exclude-table", "unrelated"), f.pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("after a second --clean restore the backup's objects differ: %s", testrig.FirstDiff(got, want))
	}
	// An existing empty database is used as it is.
	f.pg.Exec(t, "postgres", "CREATE DATABASE empty_one")
	res, err := f.restore(t, "empty_one", false)
	if err != nil || res.CreatedDatabase {
		t.Fatalf("restore into an empty database: %+v, %v", res, err)
	}
	if got, want := f.pg.DumpPlain(t, "empty_one"), f.pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("restored database differs: %s", testrig.FirstDiff(got, want))
	}
}

func TestIdentityProblems(t *testing.T) {
	f := setup(t)
	_, err := rlogical.Restore(t.Context(), rlogical.Options{Store: f.st, Manifest: f.m, Keys: &codec.Keys{}, Target: f.dsnOf("x")})
	if !errors.Is(err, codec.ErrNoIdentity) {
		t.Fatalf("restore without identity: %v", err)
	}
	other, _ := age.GenerateX25519Identity()
	_, err = rlogical.Restore(t.Context(), rlogical.Options{Store: f.st, Manifest: f.m, Keys: &codec.Keys{Identities: []age.Identity{other}}, Target: f.dsnOf("x")})
	if err == nil || !strings.Contains(err.Error(), "wrong key") {
		t.Fatalf("restore with the wrong identity: %v", err)
	}
	if f.pg.DatabaseExists(t, "x") {
		t.Fatal("a failed restore left the database it created")
	}
}
