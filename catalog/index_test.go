package catalog_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
)

// countingStore counts the manifests read from their objects, and can run
// a hook when an index shard is written.
type countingStore struct {
	*filestore.Store
	mu          sync.Mutex
	manifests   int
	onIndexPut  func()
	indexWrites int
}

func (c *countingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasSuffix(key, "/manifest.json") {
		c.mu.Lock()
		c.manifests++
		c.mu.Unlock()
	}
	return c.Store.Get(ctx, key)
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader) error {
	if strings.HasPrefix(key, "index/") {
		c.mu.Lock()
		c.indexWrites++
		hook := c.onIndexPut
		c.onIndexPut = nil
		c.mu.Unlock()
		if hook != nil {
			hook()
		}
	}
	return c.Store.Put(ctx, key, r)
}

func (c *countingStore) reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.manifests
	c.manifests = 0
	return n
}

func ids(t *testing.T, all []*catalog.Manifest) string {
	t.Helper()
	var out []string
	for _, m := range all {
		out = append(out, m.ID)
	}
	return strings.Join(out, ",")
}

// The index serves list and latest without reading the manifests; a
// backup it lacks (committed since, or while it was being rewritten) is
// listed all the same and added; a damaged or lying index loses to the
// manifests and is repaired.
func TestIndex(t *testing.T) {
	dir := t.TempDir()
	fs, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{Store: fs}
	base := time.Date(2026, 10, 30, 12, 0, 0, 0, time.UTC) // two months: two shards
	var want []*catalog.Manifest
	for i := 0; i < 40; i++ {
		want = append(want, commit(t, fs, catalog.KindLogical, "shop", base.Add(time.Duration(i)*6*time.Hour)))
	}
	all, err := catalog.List(t.Context(), st, nil)
	if err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("first list: %v", err)
	}
	if n := st.reads(); n != 40 {
		t.Fatalf("the first list read %d manifests, want all 40", n)
	}
	shards, _ := filepath.Glob(filepath.Join(dir, "index", "backups-*.json"))
	if len(shards) != 2 {
		t.Fatalf("index shards %v, want one per month", shards)
	}
	if all, err = catalog.List(t.Context(), st, nil); err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("second list: %v", err)
	}
	if n := st.reads(); n != 0 {
		t.Fatalf("with the index, list read %d manifests", n)
	}
	m, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{Kind: catalog.KindLogical})
	if err != nil || m.ID != want[39].ID {
		t.Fatalf("latest: %v %v", m, err)
	}
	if n := st.reads(); n != 1 {
		t.Fatalf("latest read %d manifests, want only the one chosen", n)
	}

	// A backup committed while a reader rewrites the index is listed.
	st.onIndexPut = func() { want = append(want, commit(t, fs, catalog.KindLogical, "shop", base.Add(300*time.Hour))) }
	os.Remove(shards[0]) // make the next list rewrite a shard
	if _, err := catalog.List(t.Context(), st, nil); err != nil {
		t.Fatal(err)
	}
	if all, err = catalog.List(t.Context(), st, nil); err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("the backup committed during the rewrite is not listed: %v", err)
	}
	if m, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{}); err != nil || m.ID != want[40].ID {
		t.Fatalf("latest after a commit the index lacked: %v %v", m, err)
	}
	st.reads()

	// A backup deleted since: gone from list and never chosen as latest.
	gone := want[40]
	if err := catalog.Delete(t.Context(), fs, gone.ID); err != nil {
		t.Fatal(err)
	}
	want = want[:40]
	if m, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{}); err != nil || m.ID != want[39].ID {
		t.Fatalf("latest after a delete: %v %v", m, err)
	}
	if all, err = catalog.List(t.Context(), st, nil); err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("list after a delete: %v", err)
	}

	// A damaged shard: the manifests are read, the shard written again.
	for _, sh := range shards {
		os.WriteFile(sh, []byte("{not json"), 0o644)
	}
	st.reads()
	if all, err = catalog.List(t.Context(), st, nil); err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("list with a damaged index: %v", err)
	}
	if n := st.reads(); n != 40 {
		t.Fatalf("with the index damaged, list read %d manifests, want 40", n)
	}
	catalog.List(t.Context(), st, nil)
	if n := st.reads(); n != 0 {
		t.Fatalf("the index was not repaired: the next list read %d manifests", n)
	}

	// A hostile shard — entries without end, entries of other months, a
	// copy whose length is not its manifest's — costs bounded work, is
	// read around, and written again.
	hostile := `{"format":1,"entries":[` + strings.Repeat(`{},`, 60000) + `{}]}`
	os.WriteFile(shards[0], []byte(hostile), 0o644)
	os.WriteFile(filepath.Join(dir, "index", "backups-evil.json"), []byte(hostile), 0o644)
	st.reads()
	if all, err = catalog.List(t.Context(), st, nil); err != nil || ids(t, all) != ids(t, want) {
		t.Fatalf("list with a hostile shard: %v", err)
	}
	if n := st.reads(); n == 0 || n == 40 {
		t.Fatalf("with one hostile shard, list read %d manifests, want that shard's only", n)
	}
	catalog.List(t.Context(), st, nil)
	if n := st.reads(); n != 0 {
		t.Fatalf("the hostile shard was not written again: the next list read %d manifests", n)
	}
}

// fakeSigner signs with a hash; fakeVerifier accepts exactly those.
type fakeSigner struct{}

func (fakeSigner) Sign(message []byte) ([]byte, error) {
	sum := sha256.Sum256(message)
	return []byte("sig:" + hex.EncodeToString(sum[:])), nil
}

type fakeVerifier struct{}

func (fakeVerifier) Verify(message, sig []byte) (string, error) {
	want, _ := fakeSigner{}.Sign(message)
	if string(sig) != string(want) {
		return "", catalog.ErrBadSignature
	}
	return "tester", nil
}

// With allowed signers, an index entry whose manifest was altered (same
// size and time as the object) does not verify, and the object is read.
func TestIndexCopyThatDoesNotVerifyLoses(t *testing.T) {
	dir := t.TempDir()
	fs, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := commitSigned(t, fs, catalog.KindLogical, "shop", time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), fakeSigner{}).ID
	st := &countingStore{Store: fs}
	if _, err := catalog.List(t.Context(), st, fakeVerifier{}); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(dir, "index", "backups-202611.json")
	body, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	// "shop" becomes "shoq" inside the copied manifest: same length.
	os.WriteFile(shard, []byte(strings.Replace(string(body), `\"shop\"`, `\"shoq\"`, 1)), 0o644)
	st.reads()
	all, err := catalog.List(t.Context(), st, fakeVerifier{})
	if err != nil || len(all) != 1 || all[0].Database != "shop" {
		t.Fatalf("list with an altered index copy: %v %+v", err, all)
	}
	if n := st.reads(); n != 1 {
		t.Fatalf("the altered copy was believed (%d manifests read)", n)
	}
	got, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{Verifier: fakeVerifier{}, Database: "shop"})
	if err != nil || got.ID != id {
		t.Fatalf("latest: %v", err)
	}
	if _, err := catalog.List(t.Context(), st, nil); errors.Is(err, storage.ErrNotExist) {
		t.Fatal(err)
	}
}
