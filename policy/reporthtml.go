package policy

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"sync"
	"time"
)

// WriteHTML renders the report as one self-contained page: inline SVG
// charts, inline styles, no script, nothing fetched.
func (r *Report) WriteHTML(w io.Writer) error {
	return pageTemplate().Execute(w, r)
}

// Parsed when first used: every drctl start would pay for it.
var pageTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"dur":  humanSeconds,
		"time": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
		"day":  func(t time.Time) string { return t.UTC().Format("2006-01-02") },
		"rpoChart": func(p ProcessReport, since, now time.Time) template.HTML {
			return chart("data that could have been lost", p.RPO, p.RPOTarget, since, now, true)
		},
		"rtoChart": func(p ProcessReport, since, now time.Time) template.HTML {
			return chart("measured restore time", p.RTO, p.RTOTarget, since, now, false)
		},
		"join": strings.Join,
		"verdict": func(ok bool) template.HTML {
			if ok {
				return `<span class="ok">met</span>`
			}
			return `<span class="bad">not met</span>`
		},
		"passed": func(ok bool) template.HTML {
			if ok {
				return `<span class="ok">passed</span>`
			}
			return `<span class="bad">failed</span>`
		},
		"status": func(rs []Result) template.HTML {
			for _, r := range rs {
				if !r.Met {
					return `<span class="badge bad">objectives not met</span>`
				}
			}
			return `<span class="badge ok">all objectives met</span>`
		},
	}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>drctl recovery objectives</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24;background:#fff}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin:2rem 0 .3rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
.meta{color:#57606a;font-size:.9rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0 1rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eaeef2;vertical-align:top}
th{color:#57606a;font-weight:600}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600}
.badge{font-size:.8rem;padding:.1rem .5rem;border-radius:1rem;margin-left:.5rem;border:1px solid currentColor}
.charts{display:flex;gap:1rem;flex-wrap:wrap} .chart{flex:1 1 30rem}
.chart figcaption{font-size:.85rem;color:#57606a}
svg{width:100%;height:auto;background:#f6f8fa;border-radius:4px}
</style></head><body>
<h1>Recovery objectives</h1>
<p class="meta">{{time .Since}} to {{time .Generated}} · repository {{.Repository}}</p>
{{range .Processes}}{{$p := .}}
<section class="process">
<h2>{{.Name}}{{if .Description}} — {{.Description}}{{end}} {{status .Now}}</h2>
<p class="meta">{{.Mode}} · database {{.Database}} · RPO {{dur .RPOTarget}} · RTO {{dur .RTOTarget}}</p>
<table><tr><th>objective</th><th>target</th><th>achieved</th><th></th><th>why</th></tr>
{{range .Now}}<tr><td>{{.Objective}}</td><td>{{dur .Target}}</td><td>{{dur .Achieved}}</td><td>{{verdict .Met}}</td><td>{{.Reason}}</td></tr>
{{end}}</table>
<div class="charts">
<figure class="chart">{{rpoChart $p $.Since $.Generated}}<figcaption>RPO: how much could have been lost (worst of each interval), against the target (dashed)</figcaption></figure>
<figure class="chart">{{rtoChart $p $.Since $.Generated}}<figcaption>RTO: each drill's measured restore time, against the target (dashed)</figcaption></figure>
</div>
<table><tr><th>drill</th><th>backup</th><th>result</th><th>restore time</th><th>phases</th><th>what it found</th></tr>
{{range .Drills}}<tr><td>{{time .End}}</td><td>{{.BackupID}}</td><td>{{passed .Passed}}</td><td>{{dur .Seconds}}</td>
<td>{{range .Phases}}{{.Name}} {{dur .Seconds}} {{end}}</td><td>{{if .Error}}{{.Error}}{{else}}{{len .Checks}} checks passed{{end}}</td></tr>
{{else}}<tr><td colspan="6">no drill in the period</td></tr>{{end}}</table>
</section>
{{end}}
<h2>Release gates</h2>
<table><tr><th>when</th><th>release</th><th>processes</th><th>decision</th><th>why</th></tr>
{{range .Gates}}<tr><td>{{time .Time}}</td><td>{{.Release}}</td><td>{{join .Processes ", "}}</td><td>{{if .Passed}}<span class="ok">go</span>{{else}}<span class="bad">stop</span>{{end}}</td><td>{{join .Reasons "; "}}</td></tr>
{{else}}<tr><td colspan="5">no gate in the period</td></tr>{{end}}</table>
</body></html>
`))
})

// chart draws points over [since, now] against a dashed target line, as
// inline SVG: a line for a series (rpo), dots for events (rto). Points
// over the target are red.
func chart(title string, pts []Point, target float64, since, now time.Time, line bool) template.HTML {
	const w, h, left, right, top, bottom = 600.0, 220.0, 56.0, 12.0, 14.0, 28.0
	top2 := target * 1.25
	for _, p := range pts {
		top2 = math.Max(top2, p.Seconds*1.1)
	}
	if top2 <= 0 {
		top2 = 1
	}
	span := now.Sub(since).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 {
		f := t.Sub(since).Seconds() / span
		return left + math.Max(0, math.Min(1, f))*(w-left-right)
	}
	y := func(s float64) float64 { return top + (1-s/top2)*(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" role="img" aria-label="%s">`, w, h, template.HTMLEscapeString(title))
	// Axes and labels.
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#8c959f" stroke-width="1"/>`, left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#8c959f" stroke-width="1"/>`, left, top, left, h-bottom)
	for _, f := range []float64{0, 0.5, 1} {
		v := top2 * f
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="end" fill="#57606a">%s</text>`, left-4, y(v)+4, humanSeconds(v))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#57606a">%s</text>`, left, h-8, since.UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="end" fill="#57606a">%s</text>`, w-right, h-8, now.UTC().Format("2006-01-02 15:04"))
	// The target.
	fmt.Fprintf(&b, `<line class="target" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#cf222e" stroke-width="1.5" stroke-dasharray="6 4"/>`, left, y(target), w-right, y(target))
	if len(pts) == 0 {
		fmt.Fprintf(&b, `<text class="empty" x="%.1f" y="%.1f" font-size="13" text-anchor="middle" fill="#57606a">no data in the period</text>`, (left+w-right)/2, (top+h-bottom)/2)
	}
	if line && len(pts) > 0 {
		var coords []string
		for _, p := range pts {
			coords = append(coords, fmt.Sprintf("%.1f,%.1f", x(p.Time), y(p.Seconds)))
		}
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="#0969da" stroke-width="1.5" points="%s"/>`, strings.Join(coords, " "))
	}
	for _, p := range pts {
		color := "#1a7f37"
		if !p.OK {
			color = "#cf222e"
		}
		r := 2.5
		if !line {
			r = 4
		}
		fmt.Fprintf(&b, `<circle class="point" cx="%.1f" cy="%.1f" r="%.1f" fill="%s"><title>%s: %s</title></circle>`,
			x(p.Time), y(p.Seconds), r, color, p.Time.UTC().Format("2006-01-02 15:04"), humanSeconds(p.Seconds))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
