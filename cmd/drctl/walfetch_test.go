package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/testrig"
)

// wal-fetch tells PostgreSQL "not archived" (1, quietly) only when the file
// is not there. Everything else — a damaged segment, a wrong key, two
// different files under one name — is 126, so recovery stops instead of
// ending early and silently losing what follows.
func TestWALFetchExitCodes(t *testing.T) {
	work := t.TempDir()
	keys := testrig.NewKeys(t, work)
	other := testrig.NewKeys(t, t.TempDir())
	repo := filepath.Join(work, "repo")
	env := []string{"DRCTL_REPO=" + repo, "DRCTL_AGE_RECIPIENTS_FILE=" + keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE=" + keys.IdentityFile}
	const name = "000000010000000000000003"
	src := filepath.Join(work, name)
	os.WriteFile(src, []byte(strings.Repeat("wal record ", 200000)), 0o600)
	mustRun(t, env, "wal-push", src)
	stored, _ := filepath.Glob(filepath.Join(repo, "wal", name+".*.zst.age"))
	if len(stored) != 1 {
		t.Fatalf("archived as %v", stored)
	}
	dest := filepath.Join(work, "RECOVERYXLOG")
	fetch := func(env []string, name string) result {
		os.Remove(dest)
		return drctl(t, env, "wal-fetch", "--prefetch", "0", name, dest)
	}
	if r := fetch(env, name); r.code != 0 {
		t.Fatalf("fetch of an archived segment: %+v", r)
	}
	if r := fetch(env, "000000010000000000000004"); r.code != 1 || strings.TrimSpace(r.stderr) != "" {
		t.Fatalf("fetch of a segment not archived: exit %d, stderr %q; want 1, quietly", r.code, r.stderr)
	}
	good, _ := os.ReadFile(stored[0])
	cases := []struct {
		name, want string
		env        []string
		damage     func()
	}{
		{"a flipped byte", "", env, func() {
			bad := append([]byte(nil), good...)
			bad[len(bad)/2] ^= 1
			os.WriteFile(stored[0], bad, 0o640)
		}},
		{"a wrong key", "", []string{env[0], "DRCTL_AGE_IDENTITY_FILE=" + other.IdentityFile}, func() {}},
		{"two files under one name", "two primaries", env, func() {
			os.WriteFile(filepath.Join(repo, "wal", name+".ffffffffffffffffffffffffffffffff.zst.age"), good, 0o640)
		}},
		{"content that does not match its name", "does not match", env, func() {
			os.Rename(stored[0], filepath.Join(repo, "wal", name+".00000000000000000000000000000000.zst.age"))
		}},
	}
	for _, c := range cases {
		c.damage()
		r := fetch(c.env, name)
		if r.code != 126 || !strings.Contains(r.stderr, c.want) {
			t.Fatalf("%s: exit %d, stderr %q; want 126 naming %q", c.name, r.code, r.stderr, c.want)
		}
		if _, err := os.Stat(dest); err == nil {
			t.Fatalf("%s: something was written to %s", c.name, dest)
		}
		// Undo: only the original file, intact.
		matches, _ := filepath.Glob(filepath.Join(repo, "wal", name+".*"))
		for _, m := range matches {
			os.Remove(m)
		}
		os.WriteFile(stored[0], good, 0o640)
	}
}
