package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/drctl/drctl/testrig"
)

var drctlBin string

func TestMain(m *testing.M) {
	if owner := os.Getenv("DRCTL_TEST_REAPER"); owner != "" {
		reap(owner)
		return
	}
	killOrphans()
	// A reaper outlives this process by design: should it die without its
	// cleanups (a panic, go test's timeout), the reaper kills what it
	// started — restored servers, detached drctl processes — at once.
	reaper := exec.Command(os.Args[0])
	reaper.Env = append(os.Environ(), "DRCTL_TEST_REAPER="+strconv.Itoa(os.Getpid()))
	reaper.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := reaper.Start(); err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "drctl-bin-")
	if err != nil {
		panic(err)
	}
	claim(dir)
	// PostgreSQL's archive_command and restore_command run it as the
	// server's OS user.
	os.Chmod(dir, 0o755)
	drctlBin = filepath.Join(dir, "drctl")
	out, err := exec.Command("go", "build", "-o", drctlBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build drctl: %v\n%s", err, out)
		os.Exit(1)
	}
	// drctl drill --sandbox kubernetes runs it from beside drctl.
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "drctl-kube"), "../drctl-kube").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build drctl-kube: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if leaked := leftovers(dir); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "processes outlived the tests (killed now):\n%s\n", strings.Join(leaked, "\n"))
		code = 1
	}
	os.RemoveAll(dir)
	reaper.Process.Kill()
	reaper.Wait()
	os.Exit(code)
}

// reap waits (bounded by the owner's life) for the test process owner to
// end, then kills what it left under its work directories.
func reap(owner string) {
	pid, err := strconv.Atoi(owner)
	if err != nil || pid <= 0 {
		return
	}
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(200 * time.Millisecond)
	}
	killOrphans()
}

// leftovers finds the processes this package's tests started that are
// still running — drctl itself (receivers, prefetchers) and the servers of
// restored data directories — waits a little for them to end on their own,
// then kills and names them. Other packages' servers (running in parallel)
// live elsewhere and are left alone.
func leftovers(binDir string) []string {
	// Only this process's own directories: another test run on the
	// machine has servers of its own.
	claimedMu.Lock()
	marks := append([]string{binDir + "/"}, claimed...)
	claimedMu.Unlock()
	find := func() map[int]string {
		out := map[int]string{}
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if err != nil {
				continue
			}
			cmdline := strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")
			for _, m := range marks {
				if strings.Contains(cmdline, m) {
					out[pid] = cmdline
				}
			}
		}
		return out
	}
	var left map[int]string
	for i := 0; i < 100; i++ { // prefetchers finish their last segments
		if left = find(); len(left) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	var names []string
	for pid, cmdline := range left {
		syscall.Kill(pid, syscall.SIGKILL)
		names = append(names, fmt.Sprintf("%d %s", pid, cmdline))
	}
	return names
}

// claim marks a work directory as this test process's: processes found
// under it once that process is gone are orphans.
func claim(dir string) {
	os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	claimedMu.Lock()
	claimed = append(claimed, dir+"/")
	claimedMu.Unlock()
}

// workDir makes a work directory the server's user can enter (t.TempDir's
// parent is private to root), claimed by this process and removed after
// the test.
func workDir(t *testing.T, prefix string) string {
	t.Helper()
	work, err := os.MkdirTemp("", "drctl-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	claim(work)
	t.Cleanup(func() { os.RemoveAll(work) })
	os.Chmod(work, 0o755)
	return work
}

var (
	claimedMu sync.Mutex
	claimed   []string // work directories of this process
)

// killOrphans kills what an earlier run of these tests left behind when it
// died without its cleanups (a panic, a timeout): servers started by
// restore --start and detached drctl processes under a work directory
// whose owner is no longer running. Work directories of a run still going
// on (another go test) are left alone.
func killOrphans() {
	var dirs []string
	for _, prefix := range []string{"drctl-bin-", "drctl-pitr-", "drctl-compat-"} {
		matched, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
		dirs = append(dirs, matched...)
	}
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue // not ours to judge
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || owner <= 0 || syscall.Kill(owner, 0) == nil {
			continue // its owner still runs
		}
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), dir+"/") {
				fmt.Fprintf(os.Stderr, "killing %d, left by a test run that died: %s\n", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) all() string { return r.stdout + r.stderr }

// drctl runs the binary with a clean DRCTL_/AWS_/PG environment plus env.
func drctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(drctlBin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DRCTL_") && !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Nothing a test runs may reach the instance metadata address.
	cmd.Env = append(cmd.Env, "AWS_EC2_METADATA_DISABLED=true")
	cmd.Env = append(cmd.Env, env...)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test process
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run drctl: %v", err)
	}
	return r
}

func mustRun(t *testing.T, env []string, args ...string) result {
	t.Helper()
	r := drctl(t, env, args...)
	if r.code != 0 {
		t.Fatalf("drctl %s: exit %d\n%s", strings.Join(args, " "), r.code, r.all())
	}
	return r
}

func mustFail(t *testing.T, env []string, wantInStderr string, args ...string) result {
	t.Helper()
	r := drctl(t, env, args...)
	if r.code == 0 {
		t.Fatalf("drctl %s succeeded, want failure with %q\n%s", strings.Join(args, " "), wantInStderr, r.all())
	}
	if !strings.Contains(r.stderr, wantInStderr) {
		t.Fatalf("drctl %s: stderr %q does not mention %q", strings.Join(args, " "), r.stderr, wantInStderr)
	}
	if lines := strings.Count(strings.TrimSpace(r.stderr), "\n"); lines > 0 {
		t.Fatalf("drctl %s: error is %d lines, want one:\n%s", strings.Join(args, " "), lines+1, r.stderr)
	}
	return r
}

func noSecrets(t *testing.T, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("output contains a secret %q:\n%s", s[:6]+"...", out)
		}
	}
}

// TestCLIRoundTripS3 is the user's path: backup, list, verify, restore, all
// against a real S3 server configured by the standard AWS variables.
func TestCLIRoundTripS3(t *testing.T) {
	pg := testrig.StartPostgres(t)
	srv := testrig.StartS3(t)
	keys := testrig.NewKeys(t, t.TempDir())
	pg.LoadAwkward(t, "shop", false)
	env := append(srv.Env(), "DRCTL_REPO="+srv.RepoURL("cli"),
		"DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
	secrets := []string{pg.Password, keys.Identity.String(), srv.SecretKey}

	r := mustRun(t, env, "backup", "--dsn", pg.URL("shop"), "--label", "release=2026.11", "--label", "process=pos-sync", "--json", "--log-level", "debug")
	noSecrets(t, r.all(), secrets...)
	var b struct {
		ID     string            `json:"id"`
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.ID == "" {
		t.Fatalf("backup --json printed %q: %v", r.stdout, err)
	}
	if b.Labels["process"] != "pos-sync" {
		t.Fatalf("labels = %v", b.Labels)
	}

	r = mustRun(t, env, "list", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("list --json = %q: %v", r.stdout, err)
	}
	for _, field := range []string{"id", "kind", "database", "start_time", "end_time", "stored_bytes", "raw_bytes", "labels"} {
		if _, ok := list[0][field]; !ok {
			t.Errorf("list --json entry lacks %q: %v", field, list[0])
		}
	}
	if list[0]["id"] != b.ID || list[0]["kind"] != "logical" || list[0]["database"] != "shop" {
		t.Fatalf("list entry = %v", list[0])
	}
	if r := mustRun(t, env, "list"); !strings.Contains(r.stdout, b.ID) || !strings.Contains(r.stdout, "release=2026.11") {
		t.Fatalf("list table:\n%s", r.stdout)
	}

	r = mustRun(t, env, "verify", "latest", "--json")
	var rep struct {
		ID string `json:"id"`
		OK bool   `json:"ok"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || !rep.OK || rep.ID != b.ID {
		t.Fatalf("verify --json = %q: %v", r.stdout, err)
	}

	r = mustRun(t, env, "restore", b.ID, "--into", pg.DSN("shop_copy"), "--json")
	noSecrets(t, r.all(), secrets...)
	var res struct {
		Database string `json:"database"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Database != "shop_copy" {
		t.Fatalf("restore --json = %q: %v", r.stdout, err)
	}
	if got, want := pg.DumpPlain(t, "shop_copy"), pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("restored database differs: %s", testrig.FirstDiff(got, want))
	}
	// A second restore into the now non-empty database is refused...
	mustFail(t, env, "not empty", "restore", "latest", "--into", pg.DSN("shop_copy"))
	// ...and allowed with --clean, the database given by the PG* variables.
	mustRun(t, append(env, pg.Env("shop_copy")...), "restore", "latest", "--into", "", "--clean")
	if got, want := pg.DumpPlain(t, "shop_copy"), pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("a --clean restore over the first one differs: %s", testrig.FirstDiff(got, want))
	}
}

// TestCLIConfigFileAndPGEnv configures everything through a YAML file and
// the database through libpq's variables.
func TestCLIConfigFileAndPGEnv(t *testing.T) {
	pg := testrig.StartPostgres(t)
	dir := t.TempDir()
	keys := testrig.NewKeys(t, dir)
	pg.Exec(t, "postgres", "CREATE DATABASE pos; ")
	pg.Exec(t, "pos", "CREATE TABLE tills (id int PRIMARY KEY, name text); INSERT INTO tills VALUES (1, 'front'), (2, 'back')")
	cfg := filepath.Join(dir, "drctl.yaml")
	yaml := fmt.Sprintf("repo: file://%s/repo\nrecipients_file: %s\nidentity_file: %s\n", dir, keys.RecipientsFile, keys.IdentityFile)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := pg.Env("pos")
	mustRun(t, env, "--config", cfg, "backup")
	mustRun(t, env, "--config", cfg, "verify", "--all")
	mustRun(t, env, "--config", cfg, "restore", "latest", "--into", pg.URL("pos_copy"))
	if n := pg.QueryInt(t, "pos_copy", "SELECT count(*) FROM tills"); n != 2 {
		t.Fatalf("restored %d tills", n)
	}
	// Flags beat the file: another repository is empty.
	if r := mustRun(t, env, "--config", cfg, "--repo", filepath.Join(dir, "other"), "list", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("list of an empty repo = %q", r.stdout)
	}
	// The env: block: drctl's own settings, over the inherited environment
	// and under flags; unknown names are reported, others refused.
	envCfg := filepath.Join(dir, "env.yaml")
	os.WriteFile(envCfg, []byte(fmt.Sprintf("env:\n  DRCTL_REPO: file://%s/repo\n  DRCTL_LOG_LEVEL: info\n  AWS_STS_REGIONAL_ENDPOINTS: regional\n", dir)), 0o600)
	r := mustRun(t, append(env, "DRCTL_REPO="+filepath.Join(dir, "other")), "--config", envCfg, "list", "--json")
	if strings.TrimSpace(r.stdout) == "[]" {
		t.Fatal("the env: block's DRCTL_REPO lost to the inherited one")
	}
	if !strings.Contains(r.stderr, "AWS_STS_REGIONAL_ENDPOINTS") {
		t.Fatalf("an unused env: variable was not reported: %s", r.stderr)
	}
	os.WriteFile(envCfg, []byte("env:\n  PATH: /tmp\n"), 0o600)
	mustFail(t, env, "PATH", "--config", envCfg, "list")
	if err := os.WriteFile(cfg, []byte("repo: x\nrepository_typo: y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustFail(t, env, "repository_typo", "--config", cfg, "list")
}

func TestCLIErrors(t *testing.T) {
	pg := testrig.StartPostgres(t)
	dir := t.TempDir()
	keys := testrig.NewKeys(t, dir)
	otherKeys := testrig.NewKeys(t, t.TempDir())
	repo := "file://" + filepath.Join(dir, "repo")
	pg.Exec(t, "postgres", "CREATE DATABASE shop")
	pg.Exec(t, "shop", "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
	base := []string{"DRCTL_REPO=" + repo}
	withKeys := append(base, "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
	secrets := []string{pg.Password, keys.Identity.String()}

	mustFail(t, base, "--no-encryption", "backup", "--dsn", pg.DSN("shop"))
	mustFail(t, withKeys, "bad DSN", "backup", "--dsn", "host=127.0.0.1 port=notaport")
	r := mustFail(t, withKeys, "password authentication failed", "backup", "--dsn", strings.Replace(pg.DSN("shop"), pg.Password, "Wr0ng-Secret", 1))
	noSecrets(t, r.all(), "Wr0ng-Secret")
	mustFail(t, withKeys, "does not exist", "backup", "--dsn", pg.DSN("no_such_db"))
	mustFail(t, append(base, "DRCTL_AGE_RECIPIENTS_FILE="+keys.IdentityFile), "secret key", "backup", "--dsn", pg.DSN("shop"))
	mustFail(t, []string{}, "no repository", "list")
	mustFail(t, []string{"DRCTL_REPO=ftp://example/x"}, "unsupported scheme", "list")
	mustFail(t, []string{"DRCTL_REPO=s3://bucket/x", "AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b",
		"AWS_ENDPOINT_URL_S3=http://127.0.0.1:1", "DRCTL_S3_FORCE_PATH_STYLE=true", "AWS_MAX_ATTEMPTS=2"}, "connection refused", "list")
	mustFail(t, []string{"DRCTL_REPO=s3://bucket/x", "DRCTL_S3_FORCE_PATH_STYLE=maybe"}, "DRCTL_S3_FORCE_PATH_STYLE", "list")
	// A new user without credentials: one line saying how to give them,
	// no SDK warning.
	noCreds := []string{"DRCTL_REPO=s3://bucket/x", "AWS_CONFIG_FILE=" + filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "none")}
	r0 := mustFail(t, noCreds, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE", "list")
	if strings.Contains(r0.stderr, "SDK") || strings.Contains(r0.stderr, "operation error") {
		t.Fatalf("SDK internals in the error: %s", r0.stderr)
	}
	if r := drctl(t, noCreds, "list", "--log-level", "debug"); !strings.Contains(r.stderr, "credential chain failed") {
		t.Fatalf("--log-level debug does not say why: %s", r.stderr)
	}
	if r := drctl(t, base, "list", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("list of an empty repository: %+v", r)
	}
	mustFail(t, withKeys, "holds no complete logical backup", "restore", "latest", "--into", pg.DSN("x"))

	r = mustRun(t, withKeys, "backup", "--dsn", pg.DSN("shop"), "--json")
	noSecrets(t, r.all(), secrets...)
	var b struct{ ID string }
	decodeJSON(t, r.stdout, &b)

	mustFail(t, withKeys, "no such backup", "restore", "20200101T000000Z-abcdef", "--into", pg.DSN("x"))
	// A second database backed up: latest must be told which.
	pg.Exec(t, "postgres", "CREATE DATABASE pos")
	pg.Exec(t, "pos", "CREATE TABLE tills (id int); INSERT INTO tills VALUES (1)")
	mustRun(t, withKeys, "backup", "--dsn", pg.DSN("pos"))
	mustFail(t, withKeys, "give --database NAME", "restore", "latest", "--into", pg.DSN("which"))
	mustRun(t, withKeys, "restore", "latest", "--database", "shop", "--into", pg.DSN("shop_latest"))
	if n := pg.QueryInt(t, "shop_latest", "SELECT count(*) FROM t"); n != 1000 {
		t.Fatalf("restore latest --database shop restored %d rows of t", n)
	}
	if r := mustRun(t, withKeys, "list", "--json", "--database", "pos"); strings.Count(r.stdout, `"id"`) != 1 {
		t.Fatalf("list --database pos: %s", r.stdout)
	}
	mustFail(t, withKeys, "no such backup", "verify", "not-an-id")
	if r := drctl(t, withKeys, "restore", "latest"); r.code != 2 || !strings.Contains(r.stderr, "--into") {
		t.Fatalf("restore without --into: %+v", r)
	}
	mustFail(t, base, "--identity-file", "verify", b.ID)
	mustFail(t, append(base, "DRCTL_AGE_IDENTITY_FILE="+otherKeys.IdentityFile), "wrong key", "restore", b.ID, "--into", pg.DSN("x"))
	mustFail(t, append(base, "DRCTL_AGE_IDENTITY_FILE="+keys.RecipientsFile), "not an age identity", "verify", b.ID)
	if pg.DatabaseExists(t, "x") {
		t.Fatal("failed restores left database x behind")
	}

	// One flipped byte: verify exits 3 naming the object, restore fails too.
	key := "backups/" + b.ID + "/dump.pgc.zst.age"
	path := filepath.Join(dir, "repo", filepath.FromSlash(key))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x40
	os.WriteFile(path, data, 0o640)
	r = drctl(t, withKeys, "verify", b.ID)
	if r.code != 3 || !strings.Contains(r.stderr, key) {
		t.Fatalf("verify of a corrupted backup: exit %d\n%s", r.code, r.all())
	}
	r = drctl(t, withKeys, "verify", "--all", "--json")
	if r.code != 3 || !strings.Contains(r.stdout, `"ok": false`) {
		t.Fatalf("verify --all --json of a corrupted backup: exit %d\n%s", r.code, r.all())
	}
	mustFail(t, withKeys, key, "restore", b.ID, "--into", pg.DSN("from_corrupt"))
	if pg.DatabaseExists(t, "from_corrupt") {
		t.Fatal("restore of a corrupted backup left a database")
	}
}

// TestCLIKilledBackupNeverListed kills drctl backup with SIGKILL half-way,
// on both backends: the backup is never listed nor chosen as latest.
func TestCLIKilledBackupNeverListed(t *testing.T) {
	pg := testrig.StartPostgres(t)
	srv := testrig.StartS3(t)
	keys := testrig.NewKeys(t, t.TempDir())
	pg.Exec(t, "postgres", "CREATE DATABASE big")
	pg.Exec(t, "big", testrig.MillionRows)
	pg.Exec(t, "big", "CREATE TABLE more AS SELECT * FROM sales_lines; CREATE TABLE more2 AS SELECT * FROM sales_lines")
	dir := t.TempDir()
	uploadsUnder := func(prefix string) int {
		ups, err := srv.Client().ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &srv.Bucket, Prefix: &prefix})
		if err != nil {
			t.Fatal(err)
		}
		return len(ups.Uploads)
	}
	cases := []struct {
		name, repo string
		midway     func() bool
		signal     syscall.Signal
	}{
		{"file", "file://" + dir, func() bool {
			entries, _ := os.ReadDir(filepath.Join(dir, ".drctl-tmp"))
			for _, e := range entries {
				if fi, err := e.Info(); err == nil && fi.Size() > 1<<20 {
					return true
				}
			}
			return false
		}, syscall.SIGKILL},
		{"s3", srv.RepoURL("killed"), func() bool { return uploadsUnder("killed/") > 0 }, syscall.SIGKILL},
		// Interrupted (Ctrl-C, a pod's SIGTERM): drctl aborts its upload.
		{"s3-sigterm", srv.RepoURL("interrupted"), func() bool { return uploadsUnder("interrupted/") > 0 }, syscall.SIGTERM},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := append(srv.Env(), "DRCTL_REPO="+c.repo, "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
			cmd := exec.Command(drctlBin, "backup", "--dsn", pg.DSN("big"))
			cmd.Env = append(os.Environ(), env...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.Now().Add(60 * time.Second)
			for !c.midway() {
				select {
				case err := <-done:
					t.Fatalf("backup finished (%v) before it could be killed half-way", err)
				default:
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					t.Fatal("backup never got half-way")
				}
				time.Sleep(5 * time.Millisecond)
			}
			cmd.Process.Signal(c.signal)
			if err := <-done; err == nil {
				t.Fatalf("backup exited 0 after %v", c.signal)
			}
			if c.signal == syscall.SIGTERM && uploadsUnder("interrupted/") != 0 {
				t.Fatal("an interrupted backup left its multipart upload pending")
			}
			if r := mustRun(t, env, "list", "--json"); strings.TrimSpace(r.stdout) != "[]" {
				t.Fatalf("a killed backup is listed: %s", r.stdout)
			}
			mustFail(t, env, "holds no complete logical backup", "restore", "latest", "--into", pg.DSN("from_killed"))
			// The repository still works: the next backup is the latest.
			r := mustRun(t, env, "backup", "--dsn", pg.DSN("big"), "--json")
			var b struct{ ID string }
			decodeJSON(t, r.stdout, &b)
			if r := mustRun(t, env, "verify", "latest", "--json"); !strings.Contains(r.stdout, b.ID) {
				t.Fatalf("latest after the killed backup is not the new one: %s", r.stdout)
			}
		})
	}
}

// TestStockToolsRecipe restores with age, zstd and pg_restore alone, as
// FORMAT.md tells a user without drctl to do.
func TestStockToolsRecipe(t *testing.T) {
	for _, tool := range []string{"age", "zstd", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testrig.Missing(t, "%s CLI not found", tool)
		}
	}
	pg := testrig.StartPostgres(t)
	dir := t.TempDir()
	keys := testrig.NewKeys(t, dir)
	pg.LoadAwkward(t, "shop", false)
	env := []string{"DRCTL_REPO=" + filepath.Join(dir, "repo"), "DRCTL_AGE_RECIPIENTS_FILE=" + keys.RecipientsFile}
	r := mustRun(t, env, "backup", "--dsn", pg.DSN("shop"), "--json")
	var b struct{ ID string }
	decodeJSON(t, r.stdout, &b)
	// FORMAT.md's own recipe, so the documentation cannot drift.
	format, err := os.ReadFile(filepath.Join(testrig.RepoRoot(), "FORMAT.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(format), "## Restoring with stock tools only")
	_, block, ok2 := strings.Cut(section, "```sh\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("FORMAT.md has no stock-tools recipe")
	}
	var script []string
	replaced := 0
	for _, line := range strings.Split(block, "\n") {
		switch {
		case strings.HasPrefix(line, "repo="):
			line, replaced = "repo="+filepath.Join(dir, "repo"), replaced+1
		case strings.HasPrefix(line, "key="):
			line, replaced = "key="+keys.IdentityFile, replaced+1
		}
		script = append(script, line)
	}
	if replaced != 2 {
		t.Fatalf("the recipe's repo= and key= lines: found %d", replaced)
	}
	cmd := exec.Command("bash", "-c", strings.Join(script, "\n"))
	cmd.Env = append(os.Environ(), pg.Env("postgres")...)
	cmd.Env = append(cmd.Env, "PATH="+pg.BinDir+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("FORMAT.md's stock-tools recipe: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), b.ID) || !strings.Contains(string(out), "dump.pgc.zst.age: OK") {
		t.Fatalf("the recipe did not read backup %s and check its SHA-256:\n%s", b.ID, out)
	}
	if got, want := pg.DumpPlain(t, "restored"), pg.DumpPlain(t, "shop"); got != want {
		t.Fatalf("restored by hand differs: %s", testrig.FirstDiff(got, want))
	}
}

// Settings come from flags, then the environment (a config file's env:
// block over the inherited one), then the config file's keys; the file is
// --config or DRCTL_CONFIG.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	repos := map[string]string{}
	for _, name := range []string{"flag", "env", "fileenv", "file"} {
		repos[name] = filepath.Join(dir, name)
		os.MkdirAll(repos[name], 0o755)
	}
	cfg := filepath.Join(dir, "drctl.yaml")
	os.WriteFile(cfg, []byte("repo: "+repos["file"]+"\nlog_level: info\n"), 0o600)
	cfgEnv := filepath.Join(dir, "drctl-env.yaml")
	os.WriteFile(cfgEnv, []byte("repo: "+repos["file"]+"\nenv:\n  DRCTL_REPO: "+repos["fileenv"]+"\n"), 0o600)
	// Opening a file repository creates its .drctl-tmp: that says which
	// repository a command used.
	which := func(env []string, args ...string) string {
		t.Helper()
		r := mustRun(t, append(env, "DRCTL_LOG_LEVEL=debug"), append(args, "list", "--json")...)
		for name, repo := range repos {
			if _, err := os.Stat(filepath.Join(repo, ".drctl-tmp")); err == nil {
				os.RemoveAll(filepath.Join(repo, ".drctl-tmp"))
				return name
			}
		}
		t.Fatalf("no repository was opened: %s", r.all())
		return ""
	}
	for _, c := range []struct {
		want string
		env  []string
		args []string
	}{
		{"file", nil, []string{"--config", cfg}},
		{"file", []string{"DRCTL_CONFIG=" + cfg}, nil},
		{"env", []string{"DRCTL_REPO=" + repos["env"]}, []string{"--config", cfg}},
		{"flag", []string{"DRCTL_REPO=" + repos["env"]}, []string{"--config", cfg, "--repo", repos["flag"]}},
		{"fileenv", []string{"DRCTL_REPO=" + repos["env"]}, []string{"--config", cfgEnv}},
		{"flag", nil, []string{"--config", cfgEnv, "--repo", repos["flag"]}},
	} {
		if got := which(c.env, c.args...); got != c.want {
			t.Fatalf("env %v, args %v: opened the %s repository, want %s", c.env, c.args, got, c.want)
		}
	}
}

// decodeJSON decodes a command's --json output, failing the test when it is
// not JSON of the expected shape.
func decodeJSON(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
}

// TestUsageExitCodes: bad usage exits 2, one line; for wal-fetch 126, so
// that a mistyped restore_command stops recovery instead of ending it as
// if the archive had no more WAL.
func TestUsageExitCodes(t *testing.T) {
	for _, c := range []struct {
		code int
		args []string
	}{
		{2, []string{"show"}},
		{2, []string{"restore"}},
		{2, []string{"list", "--bogus"}},
		{2, []string{"bogus"}},
		{2, []string{"restore", "latest", "--into", "dbname=x", "--section", "indexes"}},
		{126, []string{"wal-fetch", "000000010000000000000001"}},
		{126, []string{"wal-fetch", "--bogus", "000000010000000000000001", "/tmp/x"}},
	} {
		r := drctl(t, []string{"DRCTL_REPO=" + t.TempDir()}, c.args...)
		if r.code != c.code || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || r.stderr == "" {
			t.Errorf("drctl %s: exit %d, want %d; stderr %q", strings.Join(c.args, " "), r.code, c.code, r.stderr)
		}
	}
}
