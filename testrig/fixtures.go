package testrig

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/drctl/drctl/engine/codec"
)

// RepoRoot is the drctl checkout this package lives in.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// SQL returns a script from testdata/sql.
func SQL(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "testdata", "sql", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// MillionRows is a table of a million rows, for LoadAwkward.
const MillionRows = `CREATE TABLE public.sales_lines (id bigint PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, note text);
INSERT INTO public.sales_lines SELECT g, 'SKU-' || (g % 5000), g % 17, md5(g::text) FROM generate_series(1, 1000000) g;`

// LoadAwkward creates db with testdata/sql/awkward.sql, plus a
// million-row table when big is set.
func (pg *Postgres) LoadAwkward(t testing.TB, db string, big bool) {
	t.Helper()
	pg.Exec(t, "postgres", "CREATE DATABASE "+db)
	pg.Exec(t, db, SQL(t, "awkward.sql"))
	if big {
		pg.Exec(t, db, MillionRows)
	}
}

// Keys is a fresh age key pair, written to files as age-keygen would.
type Keys struct {
	Identity       *age.X25519Identity
	IdentityFile   string
	RecipientsFile string
}

// NewKeys generates an age identity and its recipients file in dir.
func NewKeys(t testing.TB, dir string) *Keys {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	k := &Keys{Identity: id, IdentityFile: filepath.Join(dir, "key.txt"), RecipientsFile: filepath.Join(dir, "recipients.txt")}
	if err := os.WriteFile(k.IdentityFile, []byte("# created: test\n# public key: "+id.Recipient().String()+"\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.RecipientsFile, []byte(id.Recipient().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// Codec returns the keys as the engine takes them, both halves.
func (k *Keys) Codec() *codec.Keys {
	return &codec.Keys{
		Recipients:       []age.Recipient{k.Identity.Recipient()},
		RecipientStrings: []string{k.Identity.Recipient().String()},
		Identities:       []age.Identity{k.Identity},
	}
}

// FirstDiff describes the first line where got and want differ.
func FirstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) && i < len(w); i++ {
		if g[i] != w[i] {
			return fmt.Sprintf("line %d: got %q, want %q", i+1, g[i], w[i])
		}
	}
	return fmt.Sprintf("got %d lines, want %d", len(g), len(w))
}
