package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func TestPrune(t *testing.T) {
	r := newPhysRig(t)
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE t (id int)")
	env := append(r.env, r.pg.Env("postgres")...)
	type backup struct {
		ID       string
		Kind     string
		Physical struct {
			StartSegment string `json:"start_wal_segment"`
		}
	}
	var phys, logical []backup
	for i := 0; i < 3; i++ {
		var b backup
		decodeJSON(t, mustRun(t, env, "basebackup", "--json").stdout, &b)
		phys = append(phys, b)
		mustExec(t, primary, "INSERT INTO t SELECT generate_series(1, 1000)")
		switchAndWaitArchived(t, primary)
		if i < 2 {
			decodeJSON(t, mustRun(t, env, "backup", "--json").stdout, &b)
			logical = append(logical, b)
		}
	}
	mustRun(t, r.env, "verify", phys[1].ID) // the newest verified backup is kept
	// The newest backup is a base backup: latest --into still means the
	// newest logical one, and latest --to the newest physical one.
	res := mustRun(t, append(r.env, r.pg.Env("postgres")...), "restore", "latest", "--into", "dbname=from_latest", "--json")
	if !strings.Contains(res.stdout, logical[1].ID) {
		t.Fatalf("restore latest --into restored %s, want %s", res.stdout, logical[1].ID)
	}
	if n := r.pg.QueryInt(t, "from_latest", "SELECT count(*) FROM t"); n != 2000 {
		t.Fatalf("restored table has %d rows, want the 2000 of the newest dump", n)
	}
	var onlyLogical []backup
	decodeJSON(t, mustRun(t, r.env, "list", "--json", "--kind", "logical").stdout, &onlyLogical)
	if len(onlyLogical) != 2 || onlyLogical[1].ID != logical[1].ID {
		t.Fatalf("list --kind logical: %+v", onlyLogical)
	}
	mustFail(t, r.env, "not a physical one", "restore", logical[1].ID, "--to", filepath.Join(r.work, "wrong-kind"))
	orphan := filepath.Join(r.repo, "backups", "20200101T000000Z-abcdef", "base.tar.zst.age")
	if err := os.MkdirAll(filepath.Dir(orphan), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orphan, []byte("leftover of a killed backup"), 0o640); err != nil {
		t.Fatal(err)
	}
	firstSeg := walFiles(t, r.repo, phys[0].Physical.StartSegment)
	if len(firstSeg) == 0 {
		t.Fatalf("segment %s not archived", phys[0].Physical.StartSegment)
	}

	before := repoFiles(t, r.repo)
	// --keep-within reaches the rules through the command line: every
	// backup here is minutes old, so a window of an hour keeps them all.
	var within struct {
		Delete []struct{ ID string }
	}
	decodeJSON(t, mustRun(t, r.env, "prune", "--keep-last", "1", "--keep-within", "1h", "--dry-run", "--json").stdout, &within)
	if len(within.Delete) != 0 {
		t.Fatalf("prune --keep-within 1h would delete %+v, all made within the hour", within.Delete)
	}
	res = mustRun(t, r.env, "prune", "--keep-last", "1", "--dry-run", "--json")
	var plan struct {
		DryRun bool `json:"dry_run"`
		Keep   []struct{ ID, Reason string }
		Delete []struct{ ID string }
		WAL    int      `json:"wal_delete_count"`
		Orph   []string `json:"orphans"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &plan); err != nil {
		t.Fatal(err)
	}
	var deleted []string
	for _, d := range plan.Delete {
		deleted = append(deleted, d.ID)
	}
	sort.Strings(deleted)
	want := []string{logical[0].ID, phys[0].ID}
	sort.Strings(want)
	if strings.Join(deleted, ",") != strings.Join(want, ",") || len(plan.Keep) != 3 || plan.WAL == 0 || len(plan.Orph) != 1 {
		t.Fatalf("plan: %s\nwant to delete %v", res.stdout, want)
	}
	if after := repoFiles(t, r.repo); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatal("--dry-run changed the repository")
	}

	mustRun(t, r.env, "prune", "--keep-last", "1")
	var list []backup
	decodeJSON(t, mustRun(t, r.env, "list", "--json").stdout, &list)
	var ids []string
	for _, b := range list {
		ids = append(ids, b.ID)
	}
	if strings.Join(ids, ",") != strings.Join([]string{phys[1].ID, logical[1].ID, phys[2].ID}, ",") {
		t.Fatalf("after prune: %v", ids)
	}
	if left := walFiles(t, r.repo, phys[0].Physical.StartSegment); len(left) != 0 {
		t.Fatalf("WAL only the deleted backup needed is still there: %v", left)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan left: %v", err)
	}
	res = mustRun(t, r.env, "prune", "--keep-last", "1", "--json")
	if !strings.Contains(res.stdout, `"delete": []`) || !strings.Contains(res.stdout, `"wal_delete_count": 0`) {
		t.Fatalf("a second prune still deletes: %s", res.stdout)
	}
	// What is left is whole: every kept backup verifies, WAL chain included.
	mustRun(t, r.env, "verify", "--all")
	mustFail(t, r.env, "--keep-last", "prune")
}

func walFiles(t *testing.T, repo, segment string) []string {
	m, _ := filepath.Glob(filepath.Join(repo, "wal", segment+".*"))
	return m
}

func repoFiles(t *testing.T, repo string) []string {
	var out []string
	filepath.Walk(repo, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, "verified.json") {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}
