// Package bench measures drctl against the floor (what pg_dump alone costs)
// and against the tools users would otherwise script, in one run on one
// machine, and prints ratios. Run it with `make bench`.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

type measurement struct {
	name   string
	wall   time.Duration
	rssKiB int64
}

// envInt reads a positive whole number from the environment.
func envInt(name string, def int) int {
	if s, err := strconv.Atoi(os.Getenv(name)); err == nil && s > 0 {
		return s
	}
	return def
}

func scale() int  { return envInt("DRCTL_BENCH_SCALE", 50) }
func rounds() int { return envInt("DRCTL_BENCH_ROUNDS", 3) }

// BenchmarkLogicalBackup: drctl backup to S3 versus pg_dump -Fc -Z0 to
// /dev/null (the floor), pg_dump -Fc with its default compression to local
// disk, and the shell pipeline pg_dump | zstd -T2 | age | upload.
func BenchmarkLogicalBackup(b *testing.B) {
	for range b.N {
		runLogical(b)
	}
}

func runLogical(b *testing.B) {
	pg := testrig.StartPostgres(b, "shared_buffers=256MB")
	srv := testrig.StartS3(b)
	dir := b.TempDir()
	keys := testrig.NewKeys(b, dir)
	bin := filepath.Join(dir, "drctl")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(testrig.RepoRoot(), "cmd", "drctl")).CombinedOutput(); err != nil {
		b.Fatalf("build drctl: %v\n%s", err, out)
	}
	pgbench := filepath.Join(pg.BinDir, "pgbench")
	for db, s := range map[string]int{"bench": scale(), "bench_small": max(1, scale()/10)} {
		pg.Exec(b, "postgres", "CREATE DATABASE "+db)
		start := time.Now()
		cmd := exec.Command(pgbench, "-i", "-q", "-s", strconv.Itoa(s), db)
		cmd.Env = append(os.Environ(), pg.Env(db)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		b.Logf("pgbench scale %d database %s loaded in %s", s, db, time.Since(start).Round(time.Second))
	}
	size := pg.QueryInt(b, "bench", "SELECT pg_database_size('bench')")
	pgDump := filepath.Join(pg.BinDir, "pg_dump")
	recipient := strings.TrimSpace(readFile(b, keys.RecipientsFile))
	pgEnv := append(os.Environ(), pg.Env("bench")...)
	drctlEnv := append(append(os.Environ(), srv.Env()...), "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile)

	floor := func() measurement {
		devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		defer devnull.Close()
		return run(b, "pg_dump -Fc -Z0 > /dev/null (floor)", pgEnv, devnull, pgDump, "-Fc", "-Z0", "-d", "bench")
	}
	pgDumpDefault := func() measurement {
		out := filepath.Join(dir, "default.dump")
		defer os.Remove(out)
		return run(b, "pg_dump -Fc > local file", pgEnv, nil, pgDump, "-Fc", "-d", "bench", "-f", out)
	}
	n := 0
	pipeline := func() measurement {
		n++
		return shellPipeline(b, srv, pgEnv, fmt.Sprintf("pipeline/%d", n),
			fmt.Sprintf("%q -Fc -Z0 -d bench | zstd -T2 -q -c | age -r %s", pgDump, recipient))
	}
	drctl := func(db string) func() measurement {
		return func() measurement {
			n++
			return run(b, "drctl backup -> S3 ("+db+")", append(drctlEnv, "DRCTL_REPO="+srv.RepoURL(fmt.Sprintf("drctl/%d", n))),
				nil, bin, "backup", "--dsn", pg.DSN(db))
		}
	}

	variants := []func() measurement{floor, pgDumpDefault, pipeline, drctl("bench"), drctl("bench_small")}
	best := map[string]measurement{}
	var order []string
	for r := 0; r < rounds(); r++ {
		for _, v := range variants {
			m := v()
			prev, seen := best[m.name]
			if !seen {
				order = append(order, m.name)
			}
			if !seen || m.wall < prev.wall {
				if seen && prev.rssKiB > m.rssKiB {
					m.rssKiB = prev.rssKiB
				}
				best[m.name] = m
			} else if m.rssKiB > prev.rssKiB {
				prev.rssKiB = m.rssKiB
				best[m.name] = prev
			}
		}
	}
	base := best[order[0]].wall
	fmt.Printf("\nlogical backup, pgbench scale %d (%d MiB database), best of %d rounds\n", scale(), size>>20, rounds())
	fmt.Printf("%-44s %10s %8s %12s\n", "variant", "seconds", "ratio", "peak RSS")
	for _, name := range order {
		m := best[name]
		rss := "-"
		if m.rssKiB > 0 {
			rss = fmt.Sprintf("%d MiB", m.rssKiB>>10)
		}
		fmt.Printf("%-44s %10.2f %7.2fx %12s\n", name, m.wall.Seconds(), float64(m.wall)/float64(base), rss)
	}
	d := best["drctl backup -> S3 (bench)"]
	small := best["drctl backup -> S3 (bench_small)"]
	ratio := float64(d.wall) / float64(base)
	fmt.Println()
	check("drctl within 1.2x of the pg_dump -Z0 floor", ratio <= 1.2, fmt.Sprintf("%.2fx", ratio))
	check("drctl faster than pg_dump -Fc (default compression) to disk", d.wall < best["pg_dump -Fc > local file"].wall,
		fmt.Sprintf("%.2fs vs %.2fs", d.wall.Seconds(), best["pg_dump -Fc > local file"].wall.Seconds()))
	check("drctl peak RSS under 200 MiB", d.rssKiB < 200<<10, fmt.Sprintf("%d MiB", d.rssKiB>>10))
	check("peak RSS independent of database size", d.rssKiB < small.rssKiB*3/2+16<<10,
		fmt.Sprintf("%d MiB at scale %d, %d MiB at scale %d", d.rssKiB>>10, scale(), small.rssKiB>>10, max(1, scale()/10)))
	b.ReportMetric(ratio, "x-floor")
	b.ReportMetric(float64(d.rssKiB>>10), "MiB-RSS")
}

func check(what string, ok bool, detail string) {
	verdict := "MET "
	if !ok {
		verdict = "MISS"
	}
	fmt.Printf("[%s] %s: %s\n", verdict, what, detail)
}

func readFile(b *testing.B, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return string(data)
}

// run times one command and reads its peak RSS from rusage.
func run(b *testing.B, name string, env []string, stdout *os.File, prog string, args ...string) measurement {
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	if stdout != nil {
		cmd.Stdout = stdout
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, stderr.String())
	}
	wall := time.Since(start)
	return measurement{name: name, wall: wall, rssKiB: cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss}
}

// shellPipeline runs script in bash and uploads its stdout to S3 with the
// same multipart uploader drctl uses: the "script it yourself" baseline.
func shellPipeline(b *testing.B, srv *testrig.S3, env []string, key, script string) measurement {
	st, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "shell"})
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	putErr := st.Put(context.Background(), key, out)
	if err := cmd.Wait(); err != nil || putErr != nil {
		b.Fatalf("shell pipeline: %v / %v\n%s", err, putErr, stderr.String())
	}
	return measurement{name: "pg_dump -Fc -Z0 | zstd -T2 | age | upload", wall: time.Since(start)}
}
