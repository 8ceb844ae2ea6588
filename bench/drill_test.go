package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/testrig"
)

// BenchmarkDrill: the restore time a drill measures (its RTO evidence) on
// a pgbench database, in both modes, next to the bare restore of the same
// backup: pg_restore of the dump (decrypted beforehand, not timed) into a
// new database of the running server, and drctl restore --to plus
// recovery to the end of the archive.
func BenchmarkDrill(b *testing.B) {
	for range b.N {
		runDrillBench(b)
	}
}

func runDrillBench(b *testing.B) {
	srv, work, keys, bin, archCfg := newArchiveRig(b, "drill")
	pg, pgEnv := archivingPgbench(b, bin, archCfg)
	cfg := filepath.Join(work, "drill.yaml")
	os.WriteFile(cfg, []byte(readFile(b, archCfg)+fmt.Sprintf(`identity_file: %s
dsn: %q
processes:
  - name: bench-logical
    database: postgres
    mode: logical
    rpo: 1d
    rto: 1h
    checks:
      - {name: accounts, sql: "SELECT count(*) FROM pgbench_accounts", expect: ">= 1"}
  - name: bench-pitr
    database: postgres
    mode: pitr
    rpo: 1d
    rto: 1h
    checks:
      - {name: accounts, sql: "SELECT count(*) FROM pgbench_accounts", expect: ">= 1"}
`, keys.IdentityFile, pg.DSN("postgres"))), 0o600)
	drctl := func(args ...string) []byte {
		cmd := exec.Command(bin, append([]string{"--config", cfg}, args...)...)
		cmd.Env = append(os.Environ(), srv.Env()...)
		out, err := cmd.Output()
		if err != nil {
			msg := ""
			if ee, ok := err.(*exec.ExitError); ok {
				msg = string(ee.Stderr)
			}
			b.Fatalf("drctl %s: %v\n%s%s", strings.Join(args, " "), err, out, msg)
		}
		return out
	}
	var dump struct{ ID string }
	json.Unmarshal(drctl("backup", "--json", "--label", "process=bench-logical"), &dump)
	drctl("verify", dump.ID)
	drctl("basebackup", "--label", "process=bench-pitr")

	type drillOut struct {
		Seconds float64
		Passed  bool
		Phases  []struct {
			Name    string
			Seconds float64
		}
	}
	drill := func(process string) drillOut {
		var d drillOut
		json.Unmarshal(drctl("drill", "--process", process, "--json"), &d)
		if !d.Passed {
			b.Fatalf("drill of %s failed", process)
		}
		return d
	}
	logical, pitr := drill("bench-logical"), drill("bench-pitr")

	// Bare: the dump's plaintext, then pg_restore alone.
	plain := filepath.Join(work, "dump.pgc")
	// The object as the S3 server's posix backend keeps it.
	runQuiet(b, nil, "bash", "-o", "pipefail", "-c", fmt.Sprintf("age -d -i %s < %s | zstd -dq > %s",
		keys.IdentityFile, filepath.Join(srv.Dir, "data", srv.Bucket, "drill", "backups", dump.ID, "dump.pgc.zst.age"), plain))
	pg.Exec(b, "postgres", "CREATE DATABASE bare")
	t0 := time.Now()
	runQuiet(b, pgEnv, "pg_restore", "-d", "bare", "--single-transaction", plain)
	bareLogical := time.Since(t0)

	// Bare pitr: drctl restore --to, then the server started and waited
	// for until promoted.
	dir := filepath.Join(work, "bare-pitr")
	t0 = time.Now()
	drctl("restore", "latest", "--to", dir)
	port := testrig.FreePort(b)
	start := pg.Command("pg_ctl", "-D", dir, "-w", "-t", "3600", "-l", filepath.Join(dir, "bare-pitr.log"), "-o",
		fmt.Sprintf("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c hot_standby=off", port), "start")
	if out, err := start.CombinedOutput(); err != nil {
		b.Fatalf("start the restored server: %v\n%s", err, out)
	}
	barePITR := time.Since(t0)
	pg.Command("pg_ctl", "-D", dir, "-m", "immediate", "-w", "stop").Run()

	size := pg.QueryInt(b, "postgres", "SELECT pg_database_size('postgres')")
	fmt.Printf("\nrestore drills, pgbench scale %d (%d MiB database)\n", scale(), size>>20)
	fmt.Printf("%-58s %10s\n", "variant", "seconds")
	phases := func(d drillOut) string {
		var p []string
		for _, ph := range d.Phases {
			p = append(p, fmt.Sprintf("%s %.1f", ph.Name, ph.Seconds))
		}
		return strings.Join(p, ", ")
	}
	fmt.Printf("%-58s %10.2f  (%s)\n", "drctl drill, logical (sandbox, restore, checks)", logical.Seconds, phases(logical))
	fmt.Printf("%-58s %10.2f\n", "pg_restore of the same dump, decrypted (floor)", bareLogical.Seconds())
	fmt.Printf("%-58s %10.2f  (%s)\n", "drctl drill, pitr (sandbox, restore, replay, checks)", pitr.Seconds, phases(pitr))
	fmt.Printf("%-58s %10.2f\n", "drctl restore --to + recovery to the end (floor)", barePITR.Seconds())
	// A drill's own costs: a new cluster (initdb and start, about a second
	// here) and the checks; what remains is the restore itself.
	fmt.Printf("drill / floor: logical %.2fx, pitr %.2fx\n", logical.Seconds/bareLogical.Seconds(), pitr.Seconds/barePITR.Seconds())
}

// archivingPgbench starts a cluster archiving with drctl wal-push to the
// rig's repository, loaded with pgbench at the bench's scale.
func archivingPgbench(b *testing.B, bin, archCfg string) (*testrig.Postgres, []string) {
	pg := testrig.StartPostgres(b, "shared_buffers=256MB", "wal_level=replica", "archive_mode=on", "max_wal_senders=5",
		fmt.Sprintf("archive_command=%s --config %s wal-push %%p", bin, archCfg))
	pgEnv := append(os.Environ(), pg.Env("postgres")...)
	runQuiet(b, pgEnv, "pgbench", "-i", "-q", "-s", strconv.Itoa(scale()), "postgres")
	return pg, pgEnv
}
