package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

// How many backups and WAL files the scale bench puts in the repository
// (defaults: 10,000 and 100,000: more than a year of hourly dumps), and the
// latency per request (20 ms: a distant region).
func scaleBackups() int   { return envInt("DRCTL_BENCH_BACKUPS", 10000) }
func scaleWAL() int       { return envInt("DRCTL_BENCH_WAL", 100000) }
func scaleLatencyMS() int { return envInt("DRCTL_BENCH_LATENCY_MS", 20) }

// BenchmarkCatalogScale: a repository of 10,000 logical backups and
// 100,000 archived WAL files (synthetic but valid manifests), behind 20 ms
// per S3 request. Times list (without the index, then with it), the
// resolution of latest (show latest), and prune --dry-run, as a user runs
// them, with the requests each made.
func BenchmarkCatalogScale(b *testing.B) {
	for range b.N {
		runCatalogScale(b)
	}
}

func runCatalogScale(b *testing.B) {
	srv := testrig.StartS3(b)
	proxy := testrig.StartS3Proxy(b, srv.Endpoint, 1)
	dir := b.TempDir()
	keys := testrig.NewKeys(b, dir)
	bin := filepath.Join(dir, "drctl")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(testrig.RepoRoot(), "cmd", "drctl")).CombinedOutput(); err != nil {
		b.Fatalf("build drctl: %v\n%s", err, out)
	}
	st, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "scale"})
	if err != nil {
		b.Fatal(err)
	}
	n, w := scaleBackups(), scaleWAL()
	start := time.Now()
	populate(b, st, n, w)
	fmt.Printf("\ncatalog at scale: %d logical backups and %d WAL files written in %s; %d ms per request\n",
		n, w, time.Since(start).Round(time.Second), scaleLatencyMS())

	proxy.SetLatency(time.Duration(scaleLatencyMS()) * time.Millisecond)
	env := append(os.Environ(), srv.Env()...)
	for i, kv := range env {
		if strings.HasPrefix(kv, "AWS_ENDPOINT_URL_S3=") {
			env[i] = "AWS_ENDPOINT_URL_S3=" + proxy.Endpoint
		}
	}
	env = append(env, "DRCTL_REPO="+srv.RepoURL("scale"), "DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile,
		"DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile, "AWS_EC2_METADATA_DISABLED=true")
	requests := func() int {
		_, r := proxy.Injected()
		total := 0
		for _, v := range r {
			total += v
		}
		return total
	}
	for _, c := range []struct {
		name   string
		target time.Duration
		args   []string
	}{
		{"list, no index yet (builds it)", 0, []string{"list", "--json"}},
		{"list", 3 * time.Second, []string{"list", "--json"}},
		{"latest resolved (show latest)", time.Second, []string{"show", "latest", "--json"}},
		{"prune --keep-last 100 --dry-run", 10 * time.Second, []string{"prune", "--keep-last", "100", "--dry-run", "--json"}},
	} {
		before := requests()
		out, err := os.Create(filepath.Join(dir, "out.json"))
		if err != nil {
			b.Fatal(err)
		}
		m := run(b, c.name, env, out, bin, c.args...)
		out.Close()
		// (No RSS here: the bench process that wrote the repository is
		// large, and a child's rusage inherits its high-water mark.)
		fmt.Printf("%-40s %7.2f s  %6d requests\n", c.name, m.wall.Seconds(), requests()-before)
		if c.target > 0 {
			check(fmt.Sprintf("%s under %s", c.name, c.target), m.wall < c.target, fmt.Sprintf("%.2f s", m.wall.Seconds()))
		}
		if c.args[0] == "list" {
			var all []json.RawMessage
			if err := json.Unmarshal([]byte(readFile(b, out.Name())), &all); err != nil || len(all) != n {
				b.Fatalf("list --json: %d backups (%v), want %d", len(all), err, n)
			}
		}
	}
}

// populate writes n logical backups, one an hour (a manifest and its dump
// object each), and w archived WAL files, in parallel.
func populate(b *testing.B, st *s3store.Store, n, w int) {
	ctx := context.Background()
	base := time.Now().Add(-time.Duration(n) * time.Hour).UTC().Truncate(time.Hour)
	jobs := make(chan func() error, 256)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range jobs {
				if err := job(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		at := base.Add(time.Duration(i) * time.Hour)
		id := catalog.NewID(at)
		key := catalog.ObjectKey(id, "dump.pgc.zst.age")
		m := catalog.Manifest{FormatVersion: catalog.FormatVersion, ID: id, Kind: catalog.KindLogical, Database: "erp",
			StartTime: at, EndTime: at.Add(3 * time.Minute), Labels: map[string]string{"job": "erp-dump", "process": "finance"},
			Server:      catalog.Server{Version: "15.18", VersionNum: 150018, DatabaseSize: 9 << 30},
			Compression: "zstd", Encryption: catalog.Encryption{Method: "age", Recipients: []string{"age1synthetic"}},
			Objects: []catalog.Object{{Key: key, Role: catalog.RoleDump, Size: 1, SHA256: strings.Repeat("ab", 32),
				RawSize: 8 << 30, TOCSHA256: strings.Repeat("cd", 32)}},
			Tool: catalog.Tool{Name: "drctl", Version: "bench", PgDump: "15.18", PgDumpArg: "-Fc -Z0"}}
		body, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			b.Fatal(err)
		}
		jobs <- func() error { return st.Put(ctx, key, strings.NewReader("x")) }
		jobs <- func() error { return st.Put(ctx, catalog.ManifestKey(id), bytes.NewReader(body)) }
	}
	for i := 0; i < w; i++ {
		name := fmt.Sprintf("00000001%08X%08X", i/256, i%256)
		key := fmt.Sprintf("wal/%s.%032x.zst.age", name, i)
		jobs <- func() error { return st.Put(ctx, key, strings.NewReader("w")) }
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
}
