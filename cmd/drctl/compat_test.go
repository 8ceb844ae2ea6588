package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/drctl/drctl/testrig"
)

// TestFormatV1PhysicalRepository restores testdata/repo-v1-physical, a base
// backup and its WAL written by format version 1, to the end of its
// archive, so that a change that breaks old physical backups fails CI.
// DRCTL_WRITE_FIXTURE=1 writes it (only for a new format version: add a
// repo-vN-physical beside it, never replace).
func TestFormatV1PhysicalRepository(t *testing.T) {
	fixture := filepath.Join(testrig.RepoRoot(), "testdata", "repo-v1-physical")
	keyFile := filepath.Join(testrig.RepoRoot(), "testdata", "repo-v1-key.txt")
	if os.Getenv("DRCTL_WRITE_FIXTURE") == "1" {
		writePhysicalFixture(t, fixture, keyFile)
	}
	work := workDir(t, "compat")
	// Restore from a copy: recovery must not write into testdata.
	repo := filepath.Join(work, "repo")
	if out, err := exec.Command("cp", "-a", fixture, repo).CombinedOutput(); err != nil {
		t.Fatalf("copy fixture: %v %s", err, out)
	}
	pg := testrig.StartPostgres(t) // for its binaries, user and password
	if uid, gid, ok := pg.ServerUser(); ok {
		// restore_command runs as the server's user and reads the repository.
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), repo).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v %s", err, out)
		}
	}
	r := &physRig{pg: pg, work: work, repo: repo,
		env: []string{"DRCTL_REPO=file://" + repo, "DRCTL_AGE_IDENTITY_FILE=" + keyFile}}
	mustRun(t, r.env, "verify", "--all")
	conn, _, _ := r.restoreAndStart(t, "restored")
	if n := scalar[int64](t, conn, "SELECT count(*) FROM fixture_rows"); n != 1000 {
		t.Fatalf("fixture_rows: %d rows, want 1000 (500 in the base backup, 500 from WAL)", n)
	}
}

func writePhysicalFixture(t *testing.T, fixture, keyFile string) {
	os.RemoveAll(fixture)
	r := newPhysRig(t)
	// The fixture's own key: testdata/repo-v1-key.txt, shared with repo-v1.
	r.archCfg = filepath.Join(r.work, "archive.yaml")
	recipients := filepath.Join(r.work, "fixture-recipients.txt")
	out, err := exec.Command("age-keygen", "-y", keyFile).Output()
	if err != nil {
		t.Fatalf("age-keygen -y: %v", err)
	}
	os.WriteFile(recipients, out, 0o644)
	os.WriteFile(r.archCfg, []byte("repo: file://"+r.repo+"\nrecipients_file: "+recipients+"\n"), 0o644)
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE fixture_rows AS SELECT g AS id, 'row ' || g AS note FROM generate_series(1, 500) g")
	env := append([]string{"DRCTL_REPO=file://" + r.repo, "DRCTL_AGE_RECIPIENTS_FILE=" + recipients}, r.pg.Env("postgres")...)
	mustRun(t, env, "basebackup", "--label", "fixture=format-v1")
	mustExec(t, primary, "INSERT INTO fixture_rows SELECT g, 'row ' || g FROM generate_series(501, 1000) g")
	switchAndWaitArchived(t, primary)
	os.RemoveAll(filepath.Join(r.repo, ".drctl-tmp"))
	if out, err := exec.Command("cp", "-a", r.repo, fixture).CombinedOutput(); err != nil {
		t.Fatalf("copy repository: %v %s", err, out)
	}
	exec.Command("chown", "-R", "root:root", fixture).Run()
}
