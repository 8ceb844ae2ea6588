package policy

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

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage/storagetest"
	"github.com/drctl/drctl/testrig"
)

func TestLagSeries(t *testing.T) {
	since := now.Add(-10 * time.Hour)
	var dumps []time.Time
	for h := 0; h < 9; h++ { // hourly until 8 hours after since...
		dumps = append(dumps, since.Add(time.Duration(h)*time.Hour))
	}
	dumps = append(dumps, now.Add(-30*time.Minute)) // ...then one 90 minutes later
	pts := lagSeries(dumps, since, now, time.Hour)
	if len(pts) != 10 || pts[7].Seconds != 3600 || !pts[7].OK || pts[8].Seconds != 5400 || pts[8].OK || pts[9].Seconds != 1800 {
		t.Fatalf("%+v", pts)
	}
	// Hundreds of thousands of WAL files: at most maxPoints, the worst of each slice.
	var many []time.Time
	for i := 0; i < 100000; i++ {
		many = append(many, since.Add(time.Duration(i)*360*time.Millisecond))
	}
	many[50000] = many[49999] // two at once...
	many = append(many[:60000], many[60100:]...)
	pts = lagSeries(many, since, now, time.Minute)
	worst := 0.0
	for _, p := range pts {
		worst = max(worst, p.Seconds)
	}
	if len(pts) > maxPoints+1 || worst < 36 {
		t.Fatalf("%d points, worst %v (want the 36 s gap kept)", len(pts), worst)
	}
}

// sampleReport is a month of records for two processes: lags, drills
// (one failed, one over the RTO), gates.
func sampleReport(t *testing.T) *Report {
	t.Helper()
	st := storagetest.NewMemory()
	ctx := context.Background()
	since := now.Add(-30 * 24 * time.Hour)
	for i := 0; i < 30; i++ {
		at := since.Add(time.Duration(i) * 24 * time.Hour)
		d := catalog.Drill{Process: "finance", DrillID: fmt.Sprintf("%016x", i+1), Mode: ModeLogical, BackupID: "b", Start: at, End: at.Add(time.Duration(200+i*10) * time.Second),
			Seconds: float64(200 + i*10), Passed: i != 7, Phases: []catalog.DrillPhase{{Name: "restore", Seconds: 190}, {Name: "checks", Seconds: 10}}}
		if i == 7 {
			d.Error = "checks failed: no negative amounts: expected none, saw 1 row: 42, -1"
		}
		if err := catalog.PutDrill(ctx, st, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	catalog.PutGate(ctx, st, catalog.Gate{GateID: "00000000000000aa", Time: now.Add(-48 * time.Hour), Release: "2026.11.25", Processes: []string{"finance", "pos-sync"}, Passed: false,
		Reasons: []string{"pos-sync rpo: the newest WAL was archived 5m ago: over the RPO of 1m"}}, nil)
	catalog.PutGate(ctx, st, catalog.Gate{GateID: "00000000000000bb", Time: now.Add(-24 * time.Hour), Release: "2026.11.26", Processes: []string{"finance", "pos-sync"}, Passed: true}, nil)
	procs := []Process{
		{Name: "finance", Description: "Finance posting", Database: "erp", Mode: ModeLogical, RPO: time.Hour, RTO: 30 * time.Minute, DrillMax: 7 * 24 * time.Hour},
		{Name: "pos-sync", Description: "Point-of-sale sync", Database: "pos", Mode: ModePITR, RPO: time.Minute, RTO: 10 * time.Minute, DrillMax: 7 * 24 * time.Hour},
	}
	r, err := BuildReport(ctx, st, procs, since, now, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Processes) != 2 || len(r.Processes[0].Drills) != 30 || len(r.Processes[0].RTO) != 30 || len(r.Gates) != 2 {
		t.Fatalf("report: %d processes, %d drills, %d gates", len(r.Processes), len(r.Processes[0].Drills), len(r.Gates))
	}
	// The lags, as the backups would give them (no backups in this store).
	for h := 0; h < 30*24; h += 6 {
		at := since.Add(time.Duration(h) * time.Hour)
		lag := 6 * time.Hour.Seconds()
		if h == 300 {
			lag = 9 * time.Hour.Seconds()
		}
		r.Processes[0].RPO = append(r.Processes[0].RPO, Point{Time: at, Seconds: lag, OK: lag <= 3600*8})
		r.Processes[1].RPO = append(r.Processes[1].RPO, Point{Time: at, Seconds: float64(20 + h%50), OK: true})
	}
	r.Processes[0].RPOTarget = 8 * 3600
	return r
}

func TestReportJSON(t *testing.T) {
	r := sampleReport(t)
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"processes"`, `"rpo_target_seconds"`, `"drills"`, `"gates"`, `"release":"2026.11.26"`} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("--json lacks %s", want)
		}
	}
}

// The page renders in headless Chromium with every chart drawn and no
// request beyond the page itself.
func TestReportRendersInChromium(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		testrig.Missing(t, "chromium (Debian package chromium; make deps installs it)")
	}
	r := sampleReport(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	var html bytes.Buffer
	if err := r.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	for _, banned := range []string{"<script", "http://", "https://", "@import", "url("} {
		if strings.Contains(strings.ReplaceAll(html.String(), `xmlns="http://www.w3.org/2000/svg"`, ""), banned) {
			t.Fatalf("the page holds %q", banned)
		}
	}
	os.WriteFile(page, html.Bytes(), 0o644)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(filepath.Join(dir, "profile")),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	var mu sync.Mutex
	var requests []string
	if err := chromedp.Listen(ctx, func(ev any) {
		var url string
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			url = e.Request.URL
		case network.EventRequestWillBeSent:
			url = e.Request.URL
		default:
			return
		}
		mu.Lock()
		requests = append(requests, url)
		mu.Unlock()
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// The browser runs now: a deadline for the rest may be set.
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	defer tcancel()
	enable := func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{})
		return chromedp.Void{}, err
	}
	if err := chromedp.Do(tctx, enable, chromedp.Navigate("file://"+page), chromedp.WaitVisible(chromedp.CSS("svg"))); err != nil {
		t.Fatal(err)
	}
	type chartInfo struct {
		W, H   float64
		Shapes int
		Target int
	}
	charts, err := chromedp.Run(tctx, chromedp.Evaluate[[]chartInfo](`Array.from(document.querySelectorAll("svg")).map(s => {
			const r = s.getBoundingClientRect();
			const shapes = Array.from(s.querySelectorAll(".point, .series")).filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
			return {W: r.width, H: r.height, Shapes: shapes.length, Target: s.querySelectorAll(".target").length};
		})`))
	if err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(charts) != 4 {
		t.Fatalf("%d charts, want 4 (RPO and RTO for two processes)", len(charts))
	}
	for i, c := range charts {
		// pos-sync has no drill: its RTO chart says so, with no points.
		empty := i == 3
		if c.W <= 0 || c.H <= 0 || c.Target != 1 || (!empty && c.Shapes == 0) {
			t.Errorf("chart %d: %+v", i, c)
		}
	}
	if len(requests) != 1 || !strings.HasPrefix(requests[0], "file://") {
		t.Fatalf("requests: %v (want the page alone)", requests)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.png"), shot, 0o644); err != nil || len(shot) < 10000 {
		t.Fatalf("screenshot: %d bytes, %v", len(shot), err)
	}
	t.Logf("screenshot: %s (%d bytes)", filepath.Join(dir, "report.png"), len(shot))
	if keep := os.Getenv("DRCTL_REPORT_SCREENSHOT"); keep != "" {
		os.WriteFile(keep, shot, 0o644) // to look at it
	}
}
