package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

// BenchmarkDaemon: drctl daemon's own footprint. Idle for a minute with
// four scheduled jobs (none due), its resident memory and CPU; then during
// a base backup of a pgbench scale-50 cluster (run as a child drctl), the
// peak resident memory of the daemon and of the child.
func BenchmarkDaemon(b *testing.B) {
	for range b.N {
		runDaemonBench(b)
	}
}

func runDaemonBench(b *testing.B) {
	srv, work, keys, bin, archCfg := newArchiveRig(b, "daemon")
	pg, _ := archivingPgbench(b, bin, archCfg)
	port := testrig.FreePort(b)
	cfg := filepath.Join(work, "daemon.yaml")
	jobs := `listen: 127.0.0.1:%d
jobs:
  - {name: dump, type: backup, schedule: "@daily"}
  - {name: base, type: basebackup, schedule: "@daily"}
  - {name: check, type: verify, schedule: "@daily"}
  - {name: retention, type: prune, schedule: "@daily", prune: {keep_last: 30}}
`
	base := readFile(b, archCfg)
	os.WriteFile(cfg, []byte(base+fmt.Sprintf("identity_file: %s\ndsn: %q\n", keys.IdentityFile, pg.DSN("postgres"))+fmt.Sprintf(jobs, port)), 0o600)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--config", cfg, "daemon")
		cmd.Env = os.Environ()
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return cmd
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.Fatal("the daemon did not get ready")
		return nil
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}

	// Idle: a minute with nothing due (after a few seconds to settle).
	d := start()
	time.Sleep(5 * time.Second)
	cpu0, rss0 := procStat(b, d.Process.Pid)
	t0 := time.Now()
	peakIdle := rss0
	for time.Since(t0) < time.Minute {
		time.Sleep(time.Second)
		_, rss := procStat(b, d.Process.Pid)
		peakIdle = max(peakIdle, rss)
	}
	cpu1, rss1 := procStat(b, d.Process.Pid)
	idleCPU := (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds() * 100
	stop(d)

	// Working: the base backup's time passed while no daemon ran, so it
	// runs at the next start.
	client, err := s3store.NewClient(context.Background(), srv.ClientOptions())
	if err != nil {
		b.Fatal(err)
	}
	st, err := s3store.New(client, s3store.Options{Bucket: srv.Bucket, Prefix: "daemon"})
	if err != nil {
		b.Fatal(err)
	}
	if err := catalog.WriteJobState(context.Background(), st, catalog.JobState{Job: "base", LastScheduled: time.Now().Add(-48 * time.Hour).Truncate(24 * time.Hour)}); err != nil {
		b.Fatal(err)
	}
	d = start()
	began := time.Now()
	var peakDaemon, peakChild int64
	for time.Since(began) < 10*time.Minute {
		_, rss := procStat(b, d.Process.Pid)
		peakDaemon = max(peakDaemon, rss)
		for _, child := range children(d.Process.Pid) {
			_, crss := procStat(b, child)
			peakChild = max(peakChild, crss)
		}
		s, err := catalog.ReadJobState(context.Background(), st, "base")
		if err == nil && s.LastResult == catalog.RunSuccess {
			break
		}
		if err == nil && s.LastResult == catalog.RunFailure {
			b.Fatalf("the base backup failed: %s", s.LastError)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop(d)
	var took time.Duration
	if runs, err := catalog.ListJobRuns(context.Background(), st, "base", time.Time{}, time.Time{}); err == nil && len(runs) > 0 {
		took = runs[len(runs)-1].End.Sub(runs[len(runs)-1].Start)
	}

	fmt.Printf("\ndaemon footprint (4 jobs scheduled), pgbench scale %d\n", scale())
	fmt.Printf("idle for %s: RSS %d MiB (peak %d MiB), CPU %.3f%% of a core\n", time.Since(t0).Round(time.Second), rss1>>20, peakIdle>>20, idleCPU)
	fmt.Printf("during a base backup (%.1f s): daemon peak RSS %d MiB, the drctl basebackup child's %d MiB\n", took.Seconds(), peakDaemon>>20, peakChild>>20)
	check("daemon idle under 40 MiB", peakIdle < 40<<20, fmt.Sprintf("%d MiB", peakIdle>>20))
	check("daemon idle under 0.5% of a core", idleCPU < 0.5, fmt.Sprintf("%.3f%%", idleCPU))
	check("daemon working under 100 MiB", peakDaemon < 100<<20, fmt.Sprintf("%d MiB", peakDaemon>>20))
	check("the base backup's process under 100 MiB", peakChild < 100<<20, fmt.Sprintf("%d MiB", peakChild>>20))
}

// procStat reads a process's CPU time (user + system) and resident set.
func procStat(b *testing.B, pid int) (time.Duration, int64) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// The command may hold spaces: fields start after the last ')'.
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	var rss int64
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				rss = kb << 10
			}
		}
	}
	const ticks = 100 // USER_HZ
	return time.Duration(utime+stime) * time.Second / ticks, rss
}

// children lists the pids whose parent is pid (any of its threads).
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(raw)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}
