package main_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killAt runs drctl and sends it SIGKILL after delay. It reports whether
// the command had already finished successfully, and its stdout; *full,
// when the command finished, becomes how long it took, so that the next
// random points fall within a whole run.
func killAt(t *testing.T, env []string, delay time.Duration, full *time.Duration, args ...string) (bool, string) {
	t.Helper()
	cmd := exec.Command(drctlBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "AWS_EC2_METADATA_DISABLED=true")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			*full = time.Since(start)
		}
		return err == nil, out.String()
	case <-time.After(delay):
		cmd.Process.Kill()
		<-done
		return false, out.String()
	}
}

// timed runs drctl once to completion and returns how long it took.
func timed(t *testing.T, env []string, args ...string) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	r := mustRun(t, env, args...)
	return time.Since(start), r.stdout
}

// listedWhole asserts that every listed backup has all its objects, of
// the sizes its manifest says (a cheap check after each kill; verify --all
// runs at the end).
func listedWhole(t *testing.T, env []string, repo string) []string {
	t.Helper()
	var list []struct{ ID string }
	if err := json.Unmarshal([]byte(mustRun(t, env, "list", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range list {
		var m struct {
			Objects []struct {
				Key  string
				Size int64
			}
		}
		data, err := os.ReadFile(filepath.Join(repo, "backups", b.ID, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		decodeJSON(t, string(data), &m)
		for _, o := range m.Objects {
			fi, err := os.Stat(filepath.Join(repo, filepath.FromSlash(o.Key)))
			if err != nil || fi.Size() != o.Size {
				t.Fatalf("listed backup %s lost %s: %v", b.ID, o.Key, err)
			}
		}
		ids = append(ids, b.ID)
	}
	return ids
}

// TestKillMatrix kills backup, basebackup, wal-push and prune with SIGKILL
// at 20 random points each. Afterwards nothing partial is listed, verify
// --all passes, every segment wal-push acknowledged is fetchable and
// identical, and prune never leaves a listed backup with a missing object.
func TestKillMatrix(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	const points = 20
	r := newPhysRig(t)
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g")
	env := append(append([]string{}, r.env...), r.pg.Env("postgres")...)
	at := func(d time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(d)*11/10 + 1)) }

	t.Run("backup", func(t *testing.T) {
		full, _ := timed(t, env, "backup")
		var acknowledged []string
		for i := 0; i < points; i++ {
			if ok, out := killAt(t, env, at(full), &full, "backup", "--json"); ok {
				var b struct{ ID string }
				decodeJSON(t, out, &b)
				acknowledged = append(acknowledged, b.ID)
			}
		}
		listed := strings.Join(listedWhole(t, env, r.repo), " ")
		for _, id := range acknowledged {
			if !strings.Contains(listed, id) {
				t.Fatalf("backup %s exited 0 but is not listed", id)
			}
		}
		t.Logf("%d of %d killed backups had finished", len(acknowledged), points)
	})

	t.Run("basebackup", func(t *testing.T) {
		full, _ := timed(t, env, "basebackup")
		for i := 0; i < points; i++ {
			killAt(t, env, at(full), &full, "basebackup")
		}
		listedWhole(t, env, r.repo)
	})

	t.Run("wal-push", func(t *testing.T) {
		// Segments of a timeline no server uses, so as not to clash with
		// the primary's archiving into the same repository.
		dir := t.TempDir()
		segment := func(i int) (string, []byte) {
			name := fmt.Sprintf("0000000900000000000000%02X", i)
			data := make([]byte, 16<<20)
			for j := 0; j < len(data); j += 64 { // half random, half zeros, like real WAL
				binary.LittleEndian.PutUint64(data[j:], rng.Uint64())
				binary.LittleEndian.PutUint64(data[j+8:], rng.Uint64())
				binary.LittleEndian.PutUint64(data[j+16:], rng.Uint64())
				binary.LittleEndian.PutUint64(data[j+24:], rng.Uint64())
			}
			return filepath.Join(dir, name), data
		}
		p0, d0 := segment(0)
		os.WriteFile(p0, d0, 0o600)
		full, _ := timed(t, env, "wal-push", p0)
		sums := map[string]string{}
		for i := 1; i <= points; i++ {
			path, data := segment(i)
			os.WriteFile(path, data, 0o600)
			sum := sha256.Sum256(data)
			if ok, _ := killAt(t, env, at(full), &full, "wal-push", path); !ok {
				// PostgreSQL calls archive_command again until it succeeds.
				mustRun(t, env, "wal-push", path)
			}
			sums[filepath.Base(path)] = hex.EncodeToString(sum[:])
		}
		for name, want := range sums {
			dest := filepath.Join(dir, "fetched-"+name)
			mustRun(t, env, "wal-fetch", "--prefetch", "0", name, dest)
			got, err := os.ReadFile(dest)
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != want {
				t.Fatalf("%s fetched differs from what was pushed", name)
			}
		}
	})

	t.Run("wal-push-ahead", func(t *testing.T) {
		// A pg_wal with segments PostgreSQL marked ready, archived as it
		// would: one archive_command after another, each with --push-ahead
		// 3, killed at random points and called again until it succeeds.
		// Each acknowledged segment must be in the archive, whole, at once.
		walDir := filepath.Join(t.TempDir(), "pg_wal")
		os.MkdirAll(filepath.Join(walDir, "archive_status"), 0o700)
		sums := map[string]string{}
		var names []string
		for i := 1; i <= 12; i++ {
			name := fmt.Sprintf("0000000A00000000000000%02X", i)
			data := make([]byte, 4<<20)
			for j := 0; j < len(data); j += 64 {
				binary.LittleEndian.PutUint64(data[j:], rng.Uint64())
			}
			os.WriteFile(filepath.Join(walDir, name), data, 0o600)
			os.WriteFile(filepath.Join(walDir, "archive_status", name+".ready"), nil, 0o600)
			sum := sha256.Sum256(data)
			sums[name] = hex.EncodeToString(sum[:])
			names = append(names, name)
		}
		fetchSame := func(name string) {
			t.Helper()
			dest := filepath.Join(t.TempDir(), "fetched")
			mustRun(t, env, "wal-fetch", "--prefetch", "0", name, dest)
			got, err := os.ReadFile(dest)
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != sums[name] {
				t.Fatalf("%s was acknowledged but the archive holds something else", name)
			}
		}
		full, _ := timed(t, env, "wal-push", "--push-ahead", "3", filepath.Join(walDir, names[0]))
		fetchSame(names[0])
		os.Rename(filepath.Join(walDir, "archive_status", names[0]+".ready"), filepath.Join(walDir, "archive_status", names[0]+".done"))
		fast := 0
		for _, name := range names[1:] {
			path := filepath.Join(walDir, name)
			for k := 0; k < 2; k++ {
				if ok, _ := killAt(t, env, at(full), &full, "wal-push", "--push-ahead", "3", path); ok {
					fetchSame(name)
				}
			}
			var res struct {
				PushedAhead bool `json:"pushed_ahead"`
			}
			decodeJSON(t, mustRun(t, env, "wal-push", "--push-ahead", "3", "--json", path).stdout, &res)
			if res.PushedAhead {
				fast++
			}
			fetchSame(name)
			os.Rename(filepath.Join(walDir, "archive_status", name+".ready"), filepath.Join(walDir, "archive_status", name+".done"))
		}
		t.Logf("%d of %d segments were answered from a push-ahead record", fast, len(names)-1)
		if fast == 0 {
			t.Fatal("no segment was answered from a push-ahead record: nothing was pushed ahead")
		}
	})

	t.Run("prune", func(t *testing.T) {
		// Many backups to delete: each round tops the repository up to
		// ten logical backups, then a prune is killed at a random point.
		full := time.Duration(0)
		mustRun(t, env, "backup")
		finished := 0
		for i := 0; i < points; i++ {
			// Any logical backup still listed serves as the template.
			var list []struct{ ID, Kind string }
			decodeJSON(t, mustRun(t, env, "list", "--json", "--kind", "logical").stdout, &list)
			for n := len(list); n < 10; n++ {
				cloneBackup(t, r.repo, list[0].ID, rng)
			}
			if full == 0 { // a whole prune, timed, then refill
				full, _ = timed(t, env, "prune", "--keep-last", "2")
				i--
				continue
			}
			if ok, _ := killAt(t, env, at(full), &full, "prune", "--keep-last", "2"); ok {
				finished++
			}
			listedWhole(t, env, r.repo)
		}
		t.Logf("%d of %d killed prunes had finished (a whole prune: %v)", finished, points, full)
		mustRun(t, env, "prune", "--keep-last", "2")
		listedWhole(t, env, r.repo)
	})

	// Everything listed is whole and restorable, WAL chains included.
	mustRun(t, env, "verify", "--all")
}

// cloneBackup copies a committed logical backup under a new, later id (hard
// links and a rewritten manifest): a cheap way to fill a repository.
func cloneBackup(t *testing.T, repo, id string, rng *rand.Rand) string {
	t.Helper()
	newID := time.Now().UTC().Format("20060102T150405Z") + fmt.Sprintf("-%06x", rng.IntN(1<<24))
	src, dst := filepath.Join(repo, "backups", id), filepath.Join(repo, "backups", newID)
	if err := os.MkdirAll(dst, 0o750); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		switch e.Name() {
		case "manifest.json", "verified.json":
			continue
		}
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	manifest, err := os.ReadFile(filepath.Join(src, "manifest.json"))
	if err != nil {
		t.Fatalf("clone %s: %v", id, err)
	}
	if err := os.WriteFile(filepath.Join(dst, "manifest.json"), bytes.ReplaceAll(manifest, []byte(id), []byte(newID)), 0o640); err != nil {
		t.Fatal(err)
	}
	return newID
}
