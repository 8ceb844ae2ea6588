package logical_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/logical"
	"github.com/drctl/drctl/engine/pgdsn"
	rlogical "github.com/drctl/drctl/restore/logical"
	"github.com/drctl/drctl/restore/verify"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/testrig"
)

// TestFormatV1Repository restores the repository in testdata/repo-v1,
// written by format version 1, so that a change that breaks old backups
// fails CI. DRCTL_WRITE_FIXTURE=1 rewrites it (only when the format
// version changes: then add a repo-vN beside it, do not replace).
func TestFormatV1Repository(t *testing.T) {
	dir := filepath.Join(testrig.RepoRoot(), "testdata", "repo-v1")
	keyFile := filepath.Join(testrig.RepoRoot(), "testdata", "repo-v1-key.txt")
	pg := testrig.StartPostgres(t)
	pg.Exec(t, "postgres", "CREATE DATABASE original")
	pg.Exec(t, "original", testrig.SQL(t, "repo-v1-source.sql"))
	dsnOf := func(db string) *pgdsn.DSN {
		d, err := pgdsn.Parse(pg.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if os.Getenv("DRCTL_WRITE_FIXTURE") == "1" {
		os.RemoveAll(dir)
		keys := testrig.NewKeys(t, t.TempDir())
		data, _ := os.ReadFile(keys.IdentityFile)
		os.WriteFile(keyFile, append([]byte("# TEST KEY for testdata/repo-v1 only: never use it for real backups.\n"), data...), 0o644)
		st, err := filestore.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := logical.Backup(t.Context(), logical.BackupOptions{Store: st, DSN: dsnOf("original"), Keys: keys.Codec(),
			Labels: map[string]string{"fixture": "format-v1"}, ToolVersion: "fixture"}); err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(filepath.Join(dir, ".drctl-tmp"))
	}
	// Read a copy: opening a repository may write (its temp folder), and
	// no test writes into the source tree.
	copyDir := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", dir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("copy fixture: %v %s", err, out)
	}
	st, err := filestore.Open(copyDir)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := codec.LoadIdentities(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	keys := &codec.Keys{Identities: ids}
	m, err := catalog.Resolve(t.Context(), st, "latest", catalog.Query{})
	if err != nil {
		t.Fatal(err)
	}
	if m.FormatVersion != 1 || m.Labels["fixture"] != "format-v1" {
		t.Fatalf("fixture manifest: %+v", m)
	}
	if _, err := verify.Backup(t.Context(), verify.Options{Store: st, Keys: keys}, m); err != nil {
		t.Fatal(err)
	}
	if _, err := rlogical.Restore(t.Context(), rlogical.Options{Store: st, Manifest: m, Keys: keys, Target: dsnOf("restored")}); err != nil {
		t.Fatal(err)
	}
	if got, want := pg.DumpPlain(t, "restored"), pg.DumpPlain(t, "original"); got != want {
		t.Fatalf("format v1 backup restores differently from its source SQL: %s", testrig.FirstDiff(got, want))
	}
}
