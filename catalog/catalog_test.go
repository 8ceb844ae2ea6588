package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
)

func commit(t *testing.T, st *filestore.Store, kind, db string, at time.Time) *catalog.Manifest {
	t.Helper()
	return commitSigned(t, st, kind, db, at, nil)
}

// commitSigned commits a backup of one small object, signed by signer
// when it is set.
func commitSigned(t *testing.T, st *filestore.Store, kind, db string, at time.Time, signer catalog.Signer) *catalog.Manifest {
	t.Helper()
	id := catalog.NewID(at)
	key := catalog.ObjectKey(id, "dump.pgc.zst")
	if err := st.Put(t.Context(), key, strings.NewReader("data")); err != nil {
		t.Fatal(err)
	}
	m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: kind, Database: db, StartTime: at, EndTime: at.Add(time.Second),
		Encryption: catalog.Encryption{Method: "none"},
		Objects:    []catalog.Object{{Key: key, Role: catalog.RoleDump, Size: 4, SHA256: strings.Repeat("0", 64)}}}
	if kind == catalog.KindPhysical {
		m.Physical = &catalog.Physical{}
	}
	if err := catalog.Commit(t.Context(), st, m, signer); err != nil {
		t.Fatal(err)
	}
	return m
}

// One rule for "latest": by kind, then by database, and a question
// rather than a guess when several databases could be meant.
func TestResolveLatest(t *testing.T) {
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	shop := commit(t, st, catalog.KindLogical, "shop", t0)
	pos := commit(t, st, catalog.KindLogical, "pos", t0.Add(time.Hour))
	base := commit(t, st, catalog.KindPhysical, "(cluster)", t0.Add(2*time.Hour))

	if _, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{Kind: catalog.KindLogical}); !errors.Is(err, catalog.ErrAmbiguous) || !strings.Contains(err.Error(), "pos, shop") {
		t.Fatalf("latest logical of two databases: %v", err)
	}
	for _, c := range []struct {
		q    catalog.Query
		want string
	}{
		{catalog.Query{Kind: catalog.KindLogical, Database: "shop"}, shop.ID},
		{catalog.Query{Kind: catalog.KindLogical, Database: "pos"}, pos.ID},
		{catalog.Query{Kind: catalog.KindPhysical}, base.ID},
		{catalog.Query{}, base.ID},
	} {
		m, err := catalog.Resolve(t.Context(), st, "latest", c.q)
		if err != nil || m.ID != c.want {
			t.Fatalf("latest %+v: %v %v, want %s", c.q, m, err, c.want)
		}
	}
	if _, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{Kind: catalog.KindLogical, Database: "hr"}); !errors.Is(err, catalog.ErrUnknownBackup) || !strings.Contains(err.Error(), "database hr") {
		t.Fatalf("latest of a database never backed up: %v", err)
	}
	if _, err := catalog.Resolve(t.Context(), st, base.ID, catalog.Query{Kind: catalog.KindLogical}); err == nil || !strings.Contains(err.Error(), "--to DIR") {
		t.Fatalf("a base backup's id for a logical restore: %v", err)
	}
	// Accept narrows further; what is asked for is named when nothing fits.
	_, err = catalog.Resolve(t.Context(), st, "latest", catalog.Query{Kind: catalog.KindPhysical, Accept: func(m *catalog.Manifest) bool { return m.EndTime.Before(t0) }, Purpose: "that ends before the recovery target"})
	if !errors.Is(err, catalog.ErrUnknownBackup) || !strings.Contains(err.Error(), "physical backup that ends before the recovery target") {
		t.Fatalf("latest with Accept: %v", err)
	}
}

// Commit refuses a manifest whose objects are not all stored whole.
func TestCommitChecksObjects(t *testing.T) {
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	id := catalog.NewID(at)
	m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: catalog.KindLogical, Database: "shop", StartTime: at, EndTime: at,
		Encryption: catalog.Encryption{Method: "none"},
		Objects:    []catalog.Object{{Key: catalog.ObjectKey(id, "dump.pgc.zst"), Role: catalog.RoleDump, Size: 4, SHA256: strings.Repeat("0", 64)}}}
	if err := catalog.Commit(t.Context(), st, m, nil); err == nil {
		t.Fatal("committed a backup whose object is missing")
	}
	st.Put(t.Context(), m.Objects[0].Key, strings.NewReader("dat"))
	if err := catalog.Commit(t.Context(), st, m, nil); err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Fatalf("committed a backup whose object is short: %v", err)
	}
	if all, _ := catalog.List(t.Context(), st, nil); len(all) != 0 {
		t.Fatalf("listed: %v", all)
	}
}

// retryingStore plays an S3 client whose first create landed but whose
// answer was lost: it retries, and the retry finds the key taken.
type retryingStore struct{ *filestore.Store }

func (r retryingStore) PutIfAbsent(ctx context.Context, key string, rd io.Reader) error {
	body, _ := io.ReadAll(rd)
	if err := r.Store.PutIfAbsent(ctx, key, bytes.NewReader(body)); err != nil {
		return err
	}
	return r.Store.PutIfAbsent(ctx, key, bytes.NewReader(body))
}

// A commit whose answer was lost is still a commit; another manifest
// under the id is still a conflict.
func TestCommitSurvivesLostReply(t *testing.T) {
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := retryingStore{fs}
	at := time.Now()
	id := catalog.NewID(at)
	key := catalog.ObjectKey(id, "dump.pgc.zst")
	fs.Put(t.Context(), key, strings.NewReader("data"))
	m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: catalog.KindLogical, Database: "shop", StartTime: at, EndTime: at,
		Encryption: catalog.Encryption{Method: "none"},
		Objects:    []catalog.Object{{Key: key, Role: catalog.RoleDump, Size: 4, SHA256: strings.Repeat("0", 64)}}}
	if err := catalog.Commit(t.Context(), st, m, nil); err != nil {
		t.Fatalf("commit with a lost answer: %v", err)
	}
	m.Database = "other"
	if err := catalog.Commit(t.Context(), fs, m, nil); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("a different manifest under a taken id: %v", err)
	}
}
