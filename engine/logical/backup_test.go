package logical_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/engine/pgdsn"
	rlogical "github.com/drctl/drctl/restore/logical"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/faulty"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

func dsn(t *testing.T, s string) *pgdsn.DSN {
	t.Helper()
	d, err := pgdsn.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRoundTripS3 backs up awkward data and a million rows to a real S3
// server and restores it: the restored database must dump identically.
func TestRoundTripS3(t *testing.T) {
	pg := testrig.StartPostgres(t)
	srv := testrig.StartS3(t)
	keys := testrig.NewKeys(t, t.TempDir())
	pg.LoadAwkward(t, "shop", true)

	st, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "prod/shop"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := logical.Backup(t.Context(), logical.BackupOptions{
		Store: st, DSN: dsn(t, pg.URL("shop")), Keys: keys.Codec(), Labels: map[string]string{"release": "r42"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Database != "shop" || m.Kind != catalog.KindLogical || m.Labels["release"] != "r42" || m.Encryption.Method != "age" {
		t.Fatalf("manifest: %+v", m)
	}
	obj, _ := m.Object(catalog.RoleDump)
	if obj.Size < 1<<20 || obj.RawSize < obj.Size {
		t.Fatalf("dump object sizes implausible: %+v", obj)
	}
	t.Logf("dump: %d bytes raw, %d stored", obj.RawSize, obj.Size)

	// No plaintext in the repository: neither data nor the dump's header.
	stored := readAll(t, st, obj.Key)
	for _, marker := range []string{"PGDMP", "Grüße", "りんご", "sales_lines", "SKU-1", "stock_moves"} {
		if bytes.Contains(stored, []byte(marker)) {
			t.Errorf("stored object contains plaintext %q", marker)
		}
	}
	if !bytes.HasPrefix(stored, []byte("age-encryption.org/v1\n")) {
		t.Errorf("stored object is not an age file: %q", stored[:20])
	}

	latest, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{})
	if err != nil || latest.ID != m.ID {
		t.Fatalf("latest = %v, %v; want %s", latest, err, m.ID)
	}
	res, err := rlogical.Restore(t.Context(), rlogical.Options{
		Store: st, Manifest: latest, Keys: keys.Codec(), Target: dsn(t, pg.DSN("shop_restored")),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.CreatedDatabase {
		t.Error("restore did not report creating the missing database")
	}
	if got, want := pg.DumpPlain(t, "shop_restored"), pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("restored database differs from the original (%d vs %d bytes of SQL): %s", len(got), len(want), testrig.FirstDiff(got, want))
	}
	if n := pg.QueryInt(t, "shop_restored", "SELECT count(*) FROM sales_lines"); n != 1000000 {
		t.Fatalf("restored %d sales lines, want 1000000", n)
	}
	if n := pg.QueryInt(t, "shop_restored", "SELECT count(*) FROM pg_largeobject_metadata"); n != 2 {
		t.Fatalf("restored %d large objects, want 2", n)
	}
}

func readAll(t *testing.T, st storage.Store, key string) []byte {
	t.Helper()
	rc, err := st.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFailedUploadIsNeverListed breaks the upload part-way: the backup
// fails and the catalog shows nothing.
func TestFailedUploadIsNeverListed(t *testing.T) {
	pg := testrig.StartPostgres(t)
	pg.LoadAwkward(t, "shop", false)
	pg.Exec(t, "shop", testrig.MillionRows)
	base, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &faulty.Store{Store: base, FailPutAfter: 2 << 20}
	_, err = logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, pg.DSN("shop")), Keys: testrig.NewKeys(t, t.TempDir()).Codec()})
	if !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("backup over a failing store: %v, want the injected fault", err)
	}
	assertEmpty(t, base)
}

func assertEmpty(t *testing.T, st storage.Store) {
	t.Helper()
	all, err := catalog.List(t.Context(), st, nil)
	if err != nil || len(all) != 0 {
		t.Fatalf("catalog after a failed backup: %d backups, %v", len(all), err)
	}
	objs, err := st.List(t.Context(), "")
	if err != nil || len(objs) != 0 {
		t.Fatalf("objects left after a failed backup: %v, %v", objs, err)
	}
}

// TestDumpFailureIsNeverListed: a pg_dump that writes part of a stream and
// exits non-zero is a failed backup, however the stream ended.
func TestDumpFailureIsNeverListed(t *testing.T) {
	pg := testrig.StartPostgres(t)
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "pg_dump")
	script := "#!/bin/sh\nhead -c 3000000 /dev/urandom\necho 'pg_dump: error: query failed: server closed the connection' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, pg.DSN("postgres")), Keys: testrig.NewKeys(t, t.TempDir()).Codec(), PgDump: fake})
	if err == nil || !strings.Contains(err.Error(), "server closed the connection") {
		t.Fatalf("backup with a failing pg_dump: %v, want pg_dump's message", err)
	}
	assertEmpty(t, st)
}

func TestRefusesUnencryptedUnlessAsked(t *testing.T) {
	pg := testrig.StartPostgres(t)
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, pg.DSN("postgres"))})
	if !errors.Is(err, codec.ErrNoRecipients) {
		t.Fatalf("backup without recipients: %v", err)
	}
	m, err := logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, pg.DSN("postgres")), AllowUnencrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := m.Object(catalog.RoleDump)
	if m.Encryption.Method != "none" || !strings.HasSuffix(obj.Key, ".zst") {
		t.Fatalf("unencrypted backup manifest: %+v", m)
	}
}

func TestBadConnectionNamesTargetWithoutPassword(t *testing.T) {
	pg := testrig.StartPostgres(t)
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(pg.DSN("postgres"), pg.Password, "wrong-secret-pw", 1)
	_, err = logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, bad), Keys: testrig.NewKeys(t, t.TempDir()).Codec()})
	if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("backup with a wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "wrong-secret-pw") {
		t.Fatalf("error leaks the password: %v", err)
	}
	assertEmpty(t, st)
}

// A backup whose lease could not be renewed for longer than its expiry
// refuses to commit: a cleanup may have removed its data meanwhile.
func TestBackupWithLapsedLeaseIsNotCommitted(t *testing.T) {
	pg := testrig.StartPostgres(t)
	pg.LoadAwkward(t, "shop", false)
	base, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &faulty.Store{Store: base}
	leasePuts := 0
	st.SetFail(func(method, key string) error {
		if method == "Put" && strings.HasPrefix(key, "leases/") {
			if leasePuts++; leasePuts > 1 {
				return errors.New("503 Service Unavailable")
			}
		}
		return nil
	})
	var mu sync.Mutex
	skew := time.Duration(0)
	leaseClock := func() time.Time { // twenty minutes pass between looks
		mu.Lock()
		defer mu.Unlock()
		skew += 20 * time.Minute
		return time.Now().Add(skew)
	}
	_, err = logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsn(t, pg.URL("shop")), AllowUnencrypted: true, Keys: &codec.Keys{},
		Lease: catalog.LeaseOptions{Interval: time.Millisecond, Now: leaseClock}})
	if err == nil || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("backup with a lapsed lease: %v", err)
	}
	if all, err := catalog.List(t.Context(), base, nil); err != nil || len(all) != 0 {
		t.Fatalf("listed after a lapsed lease: %v %v", all, err)
	}
}
