package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/testrig"
)

// burstScale is the pgbench scale of the WAL burst (default 340: about
// 4 GiB of WAL from pgbench -i).
func burstScale() int { return envInt("DRCTL_BENCH_BURST_SCALE", 340) }

// BenchmarkWALBurst: a primary writes WAL as fast as it can (pgbench -i)
// with archiving on: archived by drctl wal-push alone, with --push-ahead 4,
// and by pgBackRest 2.45 archive-push, archive-async=y and process-max=2, to
// the same S3 server. Reports the peak number of .ready files and the time
// from the end of the burst until the archive caught up.
func BenchmarkWALBurst(b *testing.B) {
	for range b.N {
		runWALBurst(b)
	}
}

func runWALBurst(b *testing.B) {
	pgbackrest, err := exec.LookPath("pgbackrest")
	if err != nil {
		b.Fatal("pgbackrest is not installed (make bench installs it)")
	}
	srv, work, _, bin, drctlCfg := newArchiveRig(b, "burst")
	drctlArchive := fmt.Sprintf("%s --config %s wal-push --push-ahead 4 %%p", bin, drctlCfg)
	pg := testrig.StartPostgres(b, "shared_buffers=256MB", "wal_level=replica", "archive_mode=on",
		"max_wal_senders=5", "archive_command="+drctlArchive, "max_wal_size=16GB", "checkpoint_timeout=30min")
	for _, d := range []string{"pgbr-log", "pgbr-lock", "pgbr-spool"} {
		os.MkdirAll(filepath.Join(work, d), 0o755)
		pg.GiveToServer(b, filepath.Join(work, d))
	}
	pgbrCfg := filepath.Join(work, "pgbackrest.conf")
	writePgbackrestConf(b, pgbrCfg, srv, pg, work)
	conf := readFile(b, pgbrCfg)
	os.WriteFile(pgbrCfg, []byte(strings.Replace(conf, "process-max=2\n", "process-max=2\narchive-async=y\n", 1)), 0o644)
	pgEnv := append(os.Environ(), pg.Env("postgres")...)
	runQuiet(b, pgEnv, pgbackrest, "--config="+pgbrCfg, "--stanza=bench", "stanza-create")
	conn, err := pgx.Connect(context.Background(), pg.DSN("postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())

	fmt.Printf("\nWAL burst: pgbench -i -s %d with archiving on, to S3 (TLS) on loopback\n", burstScale())
	fmt.Printf("%-58s %8s %10s %11s %10s\n", "archiver", "WAL GiB", "burst s", "peak .ready", "catch-up s")
	results := map[string]float64{}
	for i, c := range []struct{ name, command string }{
		{"drctl wal-push (one segment per call)", fmt.Sprintf("%s --config %s wal-push %%p", bin, drctlCfg)},
		{"drctl wal-push --push-ahead 4", drctlArchive},
		{"pgbackrest archive-push, archive-async=y, process-max=2", fmt.Sprintf("%s --config=%s --stanza=bench archive-push %%p", pgbackrest, pgbrCfg)},
	} {
		if _, err := conn.Exec(context.Background(), "ALTER SYSTEM SET archive_command = '"+strings.ReplaceAll(c.command, "'", "''")+"'"); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(context.Background(), "SELECT pg_reload_conf()"); err != nil {
			b.Fatal(err)
		}
		waitArchived(b, pg, conn, 10*time.Minute) // the previous round's WAL, under the previous command
		db := "burst" + strconv.Itoa(i)
		pg.Exec(b, "postgres", "CREATE DATABASE "+db)
		var startLSN, endLSN string
		conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&startLSN)
		var peak atomic.Int64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				if n := int64(readyCount(pg)); n > peak.Load() {
					peak.Store(n)
				}
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		start := time.Now()
		runQuiet(b, append(os.Environ(), pg.Env(db)...), filepath.Join(pg.BinDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(burstScale()), db)
		burst := time.Since(start)
		conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&endLSN)
		ended := time.Now()
		waitArchived(b, pg, conn, 30*time.Minute)
		catchUp := time.Since(ended)
		close(stop)
		<-sampled
		var walBytes float64
		conn.QueryRow(context.Background(), "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8", endLSN, startLSN).Scan(&walBytes)
		fmt.Printf("%-58s %8.2f %10.1f %11d %10.2f\n", c.name, walBytes/(1<<30), burst.Seconds(), peak.Load(), catchUp.Seconds())
		results[c.name] = catchUp.Seconds()
		pg.Exec(b, "postgres", "DROP DATABASE "+db)
	}
	d, p := results["drctl wal-push --push-ahead 4"], results["pgbackrest archive-push, archive-async=y, process-max=2"]
	check("archive caught up no later than pgBackRest async", d <= p, fmt.Sprintf("%.2f s against %.2f s", d, p))
}

// readyCount is how many WAL files wait for archive_command.
func readyCount(pg *testrig.Postgres) int {
	entries, err := os.ReadDir(filepath.Join(pg.DataDir(), "pg_wal", "archive_status"))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".ready") {
			n++
		}
	}
	return n
}

// waitArchived closes the current segment and waits until nothing is left
// to archive.
func waitArchived(b *testing.B, pg *testrig.Postgres, conn *pgx.Conn, limit time.Duration) {
	if _, err := conn.Exec(context.Background(), "SELECT pg_switch_wal()"); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(limit)
	for readyCount(pg) > 0 {
		if time.Now().After(deadline) {
			var failed int64
			var last *string
			conn.QueryRow(context.Background(), "SELECT failed_count, last_failed_wal FROM pg_stat_archiver").Scan(&failed, &last)
			b.Fatalf("archiving did not catch up within %s: %d .ready files, archive_command failed %d times", limit, readyCount(pg), failed)
		}
		time.Sleep(10 * time.Millisecond) // catch-up times are a few tenths of a second
	}
}
