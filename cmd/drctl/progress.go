package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// progressBar draws restore progress on a terminal; elsewhere it is silent.
type progressBar struct {
	w     io.Writer
	on    bool
	start time.Time
	last  time.Time
}

func newProgressBar(w io.Writer, wanted bool) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{w: w, on: wanted && ok && term.IsTerminal(int(f.Fd())), start: time.Now()}
}

func (p *progressBar) update(done, total int64) {
	if !p.on || (time.Since(p.last) < 200*time.Millisecond && done < total) {
		return
	}
	p.last = time.Now()
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	const width = 30
	filled := int(frac * width)
	rate := float64(done) / max(time.Since(p.start).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\r[%s%s] %5.1f%% %s/%s %s/s ", strings.Repeat("=", filled), strings.Repeat(" ", width-filled),
		frac*100, humanBytes(done), humanBytes(total), humanBytes(int64(rate)))
}

func (p *progressBar) finish() {
	if p.on && !p.last.IsZero() {
		fmt.Fprintln(p.w)
	}
}
