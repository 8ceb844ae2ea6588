package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drctl/drctl/testrig"
)

// The compressible stream's size (default 60 GiB) and the incompressible
// one's (default 2 GiB: versitygw's posix backend keeps a multipart upload's
// part checksums in an extended attribute, and fails to complete uploads of
// a few hundred parts or more with "no space left on device"; S3 takes
// 10,000).
func streamGiB() int64 { return int64(envInt("DRCTL_BENCH_STREAM_GIB", 60)) }
func randomGiB() int64 { return int64(envInt("DRCTL_BENCH_RANDOM_GIB", 2)) }

// BenchmarkMemory: the peak RSS of `drctl backup` when pg_dump produces a
// very large stream, through the real pipeline (zstd, age, multipart upload)
// to the S3 server. pg_dump is played by a script (DRCTL_PG_BINDIR) that
// writes the stream: 60 GiB of zeros (compressible: the codec's memory over
// a long stream), and 2 GiB from /dev/urandom (incompressible: full-size
// parts in flight all along).
func BenchmarkMemory(b *testing.B) {
	for range b.N {
		runMemory(b)
	}
}

func runMemory(b *testing.B) {
	pg := testrig.StartPostgres(b)
	srv := testrig.StartS3(b)
	b.Cleanup(func() {
		if b.Failed() {
			log := readFile(b, filepath.Join(srv.Dir, "versitygw.log"))
			if len(log) > 3000 {
				log = log[len(log)-3000:]
			}
			fmt.Printf("versitygw log (end):\n%s\n", log)
		}
	})
	dir := b.TempDir()
	keys := testrig.NewKeys(b, dir)
	bin := filepath.Join(dir, "drctl")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(testrig.RepoRoot(), "cmd", "drctl")).CombinedOutput(); err != nil {
		b.Fatalf("build drctl: %v\n%s", err, out)
	}
	for _, c := range []struct {
		name   string
		source string
		bytes  int64
	}{
		{"zeros", "/dev/zero", streamGiB() << 30},
		{"random", "/dev/urandom", randomGiB() << 30},
	} {
		fake := filepath.Join(dir, "fake-"+c.name)
		os.MkdirAll(fake, 0o755)
		script := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'pg_dump (PostgreSQL) 15'; exit 0; }\nexec head -c %d %s\n", c.bytes, c.source)
		if err := os.WriteFile(filepath.Join(fake, "pg_dump"), []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
		env := append(append(os.Environ(), srv.Env()...), "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile,
			"DRCTL_PG_BINDIR="+fake, "DRCTL_REPO="+srv.RepoURL("memory-"+c.name), "DRCTL_SPOOL_DIR="+dir)
		out, err := os.Create(filepath.Join(dir, c.name+".json"))
		if err != nil {
			b.Fatal(err)
		}
		m := run(b, "drctl backup of "+c.name, env, out, bin, "backup", "--dsn", pg.DSN("postgres"), "--json")
		out.Close()
		var res struct {
			RawBytes    int64 `json:"raw_bytes"`
			StoredBytes int64 `json:"stored_bytes"`
		}
		json.Unmarshal([]byte(readFile(b, out.Name())), &res)
		if res.RawBytes != c.bytes {
			b.Fatalf("%s: %d bytes dumped, want %d", c.name, res.RawBytes, c.bytes)
		}
		fmt.Printf("%-42s %6.1f GiB in %-8s (%4.0f MiB/s) stored %8.1f MiB  peak RSS %4d MiB\n", m.name,
			float64(c.bytes)/(1<<30), m.wall.Round(time.Second), float64(c.bytes)/(1<<20)/m.wall.Seconds(),
			float64(res.StoredBytes)/(1<<20), m.rssKiB>>10)
		check("peak RSS under 100 MiB, "+c.name, m.rssKiB < 100<<10, fmt.Sprintf("%d MiB", m.rssKiB>>10))
		b.ReportMetric(float64(m.rssKiB>>10), "MiB-RSS-"+c.name)
	}
}
