package main_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/testrig"
)

// signingKey makes an Ed25519 key with the stock ssh-keygen, readable by
// the server's user (archive_command signs as that user), and an
// allowed_signers file naming it.
func signingKey(t *testing.T, r *physRig, name string) (key, allowed string) {
	t.Helper()
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		testrig.Missing(t, "ssh-keygen (Debian's openssh-client; make deps installs it)")
	}
	key = filepath.Join(r.work, name)
	if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	r.pg.GiveToServer(t, key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	allowed = filepath.Join(r.work, name+".allowed_signers")
	if err := os.WriteFile(allowed, []byte(name+"@test "+string(pub)), 0o644); err != nil {
		t.Fatal(err)
	}
	return key, allowed
}

func stockVerify(t *testing.T, allowed, principal, sigFile string, message []byte) error {
	t.Helper()
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", principal, "-n", "drctl", "-s", sigFile)
	cmd.Stdin = strings.NewReader(string(message))
	if out, err := cmd.CombinedOutput(); err != nil {
		return &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: out}
	}
	return nil
}

// TestSignedRepository: with a signing key, manifests and WAL are signed
// (ssh-keygen -Y verify accepts them); with an allowed-signers file, a
// tampered manifest, a WAL file without its signature and an unsigned
// backup are refused by verify, restore and wal-fetch, each named; without
// one, verify says what is unsigned.
func TestSignedRepository(t *testing.T) {
	r := newPhysRig(t)
	key, allowed := signingKey(t, r, "backup-host")
	// archive_command signs too, from now on.
	cfg, _ := os.ReadFile(r.archCfg)
	if err := os.WriteFile(r.archCfg, append(cfg, []byte("signing_key_file: "+key+"\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	primary := connect(t, r.pg.DSN("postgres"))
	mustExec(t, primary, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 500)")
	switchAndWaitArchived(t, primary)
	plain := append([]string{}, r.env...)
	signing := append(append([]string{}, r.env...), "DRCTL_SIGNING_KEY_FILE="+key)
	checking := append(append([]string{}, r.env...), "DRCTL_ALLOWED_SIGNERS_FILE="+allowed)
	pgEnv := r.pg.Env("postgres")

	var base, dump struct{ ID string }
	decodeJSON(t, mustRun(t, append(signing, pgEnv...), "basebackup", "--json").stdout, &base)
	mustExec(t, primary, "INSERT INTO t SELECT generate_series(501, 600)")
	switchAndWaitArchived(t, primary)
	decodeJSON(t, mustRun(t, append(signing, pgEnv...), "backup", "--json").stdout, &dump)

	// Everything verifies with the allowed signers, signer named.
	res := mustRun(t, checking, "verify", "--all", "--json")
	var reports []struct {
		ID        string
		Signature string
		WALErrors []string `json:"wal_signature_errors"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &reports); err != nil || len(reports) != 2 {
		t.Fatalf("verify --all --json: %v\n%s", err, res.stdout)
	}
	for _, rep := range reports {
		if rep.Signature != "verified (backup-host@test)" || len(rep.WALErrors) != 0 {
			t.Fatalf("report of %s: %+v", rep.ID, rep)
		}
	}
	// Stock tools: ssh-keygen checks a manifest and a WAL file.
	manifest := filepath.Join(r.repo, "backups", dump.ID, "manifest.json")
	body, _ := os.ReadFile(manifest)
	if err := stockVerify(t, allowed, "backup-host@test", manifest+".sig", body); err != nil {
		t.Fatalf("ssh-keygen -Y verify of a manifest: %s", err.(*exec.ExitError).Stderr)
	}
	sigs, _ := filepath.Glob(filepath.Join(r.repo, "wal", "0000000100000000000000??.*.sig"))
	if len(sigs) == 0 {
		t.Fatal("no WAL signature stored")
	}
	walSig := sigs[len(sigs)-1]
	parts := strings.Split(filepath.Base(walSig), ".") // NAME.HASH.sig
	if err := stockVerify(t, allowed, "backup-host@test", walSig, []byte("drctl-wal-v1\n"+parts[0]+"\n"+parts[1]+"\n")); err != nil {
		t.Fatalf("ssh-keygen -Y verify of a WAL file: %s", err.(*exec.ExitError).Stderr)
	}

	// A restore through restore_command checks each WAL file's signature.
	r.env = checking
	conn, _, _ := r.restoreAndStart(t, "signed")
	if n := scalar[int64](t, conn, "SELECT count(*) FROM t"); n != 600 {
		t.Fatalf("restored %d rows, want 600", n)
	}

	// A WAL file whose signature is gone: verify names it, wal-fetch stops
	// recovery (126) instead of serving it.
	os.Rename(walSig, walSig+".moved")
	r2 := drctl(t, checking, "verify", base.ID)
	if r2.code != 3 || !strings.Contains(r2.stderr, parts[0]) || !strings.Contains(r2.stderr, "not signed") {
		t.Fatalf("verify with a WAL signature missing: exit %d\n%s", r2.code, r2.all())
	}
	r2 = drctl(t, checking, "wal-fetch", "--prefetch", "0", parts[0], filepath.Join(r.work, "fetched"))
	if r2.code != 126 || !strings.Contains(r2.stderr, "not signed") {
		t.Fatalf("wal-fetch of an unsigned segment: exit %d\n%s", r2.code, r2.all())
	}
	if _, err := os.Stat(filepath.Join(r.work, "fetched")); err == nil {
		t.Fatal("wal-fetch wrote an unsigned segment")
	}
	mustRun(t, plain, "wal-fetch", "--prefetch", "0", parts[0], filepath.Join(r.work, "fetched")) // unchecked: served
	os.Rename(walSig+".moved", walSig)

	// A tampered manifest (a label changed, checksums intact) is refused.
	tampered := strings.Replace(string(body), `"kind": "logical"`, `"kind": "logical", "labels": {"release": "evil"}`, 1)
	if tampered == string(body) {
		t.Fatal("test bug: the manifest was not changed")
	}
	os.WriteFile(manifest, []byte(tampered), 0o640)
	mustFail(t, append(checking, pgEnv...), "does not match the signed content", "restore", dump.ID, "--into", "dbname=from_tampered")
	r2 = drctl(t, checking, "verify", "--all", "--json")
	if r2.code != 3 || !strings.Contains(r2.stderr, dump.ID) {
		t.Fatalf("verify --all of a tampered manifest: exit %d\n%s", r2.code, r2.all())
	}
	// Reported against that backup; the base backup is still verified.
	var tamperedReports []struct {
		ID, Signature string
		OK            bool
	}
	decodeJSON(t, r2.stdout, &tamperedReports)
	if len(tamperedReports) != 2 {
		t.Fatalf("verify --all --json with a tampered manifest: %s", r2.stdout)
	}
	for _, rep := range tamperedReports {
		if tampered := rep.ID == dump.ID; rep.OK == tampered || tampered != strings.HasPrefix(rep.Signature, "refused") {
			t.Fatalf("report %+v", rep)
		}
	}
	if r.pg.DatabaseExists(t, "from_tampered") {
		t.Fatal("a refused restore created its database")
	}
	os.WriteFile(manifest, body, 0o640)

	// An unsigned backup: refused with allowed signers, "unsigned" without.
	var unsigned struct{ ID string }
	decodeJSON(t, mustRun(t, append(plain, pgEnv...), "backup", "--json").stdout, &unsigned)
	mustFail(t, append(checking, pgEnv...), unsigned.ID+": not signed", "restore", "latest", "--into", "dbname=from_unsigned")
	res = mustRun(t, plain, "verify", unsigned.ID, "--json")
	if !strings.Contains(res.stdout, `"signature": "unsigned"`) {
		t.Fatalf("verify of an unsigned backup without allowed signers: %s", res.stdout)
	}
	res = mustRun(t, plain, "verify", dump.ID, "--json")
	if !strings.Contains(res.stdout, `"signature": "signed (not checked`) {
		t.Fatalf("verify of a signed backup without allowed signers: %s", res.stdout)
	}
	// Turning signatures on for what was written before: sign, then
	// everything verifies with the allowed signers again.
	if r := mustRun(t, append(plain, "DRCTL_SIGNING_KEY_FILE="+key), "sign", "--all"); !strings.Contains(r.stdout, "signed 1 backups") {
		t.Fatalf("sign --all: %s", r.stdout)
	}
	mustRun(t, checking, "verify", "--all")
	mustFail(t, plain, "no signing key", "sign", "--all")
}

// Physical backups and WAL leak neither data nor secrets: no stored object
// (tars, WAL, backup_manifest) holds a plaintext canary or a file name of
// the data directory, and no command's output (basebackup, list, verify,
// wal-fetch, wal-push, show), debug logs included, holds the database
// password or the age identity.
func TestPhysicalNoPlaintextNoSecrets(t *testing.T) {
	r := newPhysRig(t)
	primary := connect(t, r.pg.DSN("postgres"))
	const canary = "PLAINTEXT-CANARY-7c1e9b"
	if _, err := primary.Exec(context.Background(), "CREATE TABLE secrets AS SELECT '"+canary+"' || g AS v FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	switchAndWaitArchived(t, primary)
	secrets := []string{r.pg.Password, r.keys.Identity.String()}
	debug := append(append([]string{}, r.env...), "DRCTL_LOG_LEVEL=debug")
	var outputs []string
	res := mustRun(t, debug, "basebackup", "--dsn", r.pg.DSN("postgres"), "--json")
	outputs = append(outputs, res.all())
	mustExec(t, primary, "INSERT INTO secrets VALUES ('"+canary+"-late')")
	switchAndWaitArchived(t, primary)
	for _, args := range [][]string{{"list"}, {"list", "--json"}, {"verify", "--all"}} {
		outputs = append(outputs, mustRun(t, debug, args...).all())
	}
	segs, _ := filepath.Glob(filepath.Join(r.repo, "wal", "0000000100000000000000??.*.zst.age"))
	name := strings.Split(filepath.Base(segs[0]), ".")[0]
	outputs = append(outputs, mustRun(t, debug, "wal-fetch", "--prefetch", "0", name, filepath.Join(r.work, "fetched")).all())
	history := filepath.Join(r.work, "00000009.history")
	if err := os.WriteFile(history, []byte("8\t0/9000000\tno recovery target specified\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, mustRun(t, debug, "wal-push", history).all())
	outputs = append(outputs, mustRun(t, debug, "show", "latest", "--json").all())
	for _, out := range outputs {
		noSecrets(t, out, secrets...)
	}
	checked := 0
	filepath.Walk(r.repo, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".age") {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, plain := range []string{canary, "PG_VERSION", "pg_control"} {
			if strings.Contains(string(data), plain) {
				t.Fatalf("%s holds plaintext %q", p, plain)
			}
		}
		checked++
		return nil
	})
	if checked < 4 {
		t.Fatalf("only %d stored objects checked", checked)
	}
}
