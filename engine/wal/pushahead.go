package wal

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Push-ahead: archive_command runs one segment at a time, and a primary
// that writes WAL faster than one push per segment piles up .ready files
// until its disk fills. PushAhead archives the segment it is called for
// and, alongside, the next segments PostgreSQL has marked ready, recording
// each one stored in a spool in pg_wal (pg_wal/.drctl-archived/<name>).
// When PostgreSQL then calls for one of those, the record and a look at the
// repository answer at once.
//
// A record is written only after its segment is stored durably (and
// signed), with the size and modification time the file had: a push-ahead
// killed half-way leaves no record, and a record for another file under
// the same name (a data directory restored in place) does not match. A
// record is believed only when the repository still holds its object.

// AheadDir is where push-ahead records live, inside pg_wal.
const AheadDir = ".drctl-archived"

type aheadRecord struct {
	Key     string `json:"key"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mod_time_ns"`
}

// PushAhead archives path, and up to ahead of the segments after it that
// archive_status marks ready (in parallel); failures of those are logged,
// and their own archive_command retries them.
func (a *Archive) PushAhead(ctx context.Context, path string, ahead int, log *slog.Logger) (*PushResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := filepath.Base(path)
	walDir := filepath.Dir(path)
	spool := filepath.Join(walDir, AheadDir)
	if res := a.pushedAhead(ctx, path, spool); res != nil {
		forgetBefore(spool, name)
		return res, nil
	}
	var wg sync.WaitGroup
	if ahead > 0 && IsSegmentName(name) {
		for _, next := range readyAfter(walDir, spool, name, ahead) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := filepath.Join(walDir, next)
				fi, err := os.Stat(p)
				if err != nil {
					return
				}
				res, err := a.Push(ctx, p)
				if err != nil {
					log.Debug("push-ahead failed; its own archive_command will push it", "file", next, "error", err)
					return
				}
				if err := remember(spool, next, res.Key, fi); err != nil {
					log.Debug("could not record a pushed-ahead segment", "file", next, "error", err)
				}
			}()
		}
	}
	res, err := a.Push(ctx, path)
	wg.Wait()
	if err == nil {
		forgetBefore(spool, name)
	}
	return res, err
}

// pushedAhead answers for a segment a push-ahead stored: its record
// matches the file, and the repository holds the object.
func (a *Archive) pushedAhead(ctx context.Context, path, spool string) *PushResult {
	name := filepath.Base(path)
	body, err := os.ReadFile(filepath.Join(spool, name))
	if err != nil {
		return nil
	}
	var rec aheadRecord
	fi, serr := os.Stat(path)
	if json.Unmarshal(body, &rec) != nil || serr != nil || rec.Size != fi.Size() || rec.ModTime != fi.ModTime().UnixNano() ||
		!strings.HasPrefix(rec.Key, Prefix+name+".") {
		return nil
	}
	if _, err := a.Store.Stat(ctx, rec.Key); err != nil {
		return nil // not there (any more): push it the ordinary way
	}
	return &PushResult{Name: name, Key: rec.Key, AlreadyArchived: true, PushedAhead: true}
}

// readyAfter lists up to n segments after name that archive_status marks
// ready and no record says are stored, oldest first.
func readyAfter(walDir, spool, name string, n int) []string {
	entries, err := os.ReadDir(filepath.Join(walDir, "archive_status"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		next, ok := strings.CutSuffix(e.Name(), ".ready")
		if !ok || next <= name || !IsSegmentName(next) {
			continue
		}
		if _, err := os.Stat(filepath.Join(spool, next)); err == nil {
			continue
		}
		out = append(out, next)
	}
	sort.Strings(out)
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// remember records that name (as fi) is stored under key: written to a
// temporary file and renamed, so a record is whole or absent.
func remember(spool, name, key string, fi os.FileInfo) error {
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return err
	}
	body, err := json.Marshal(aheadRecord{Key: key, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(spool, ".tmp-")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(body)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), filepath.Join(spool, name))
	}
	if werr != nil {
		os.Remove(tmp.Name())
	}
	return werr
}

// forgetBefore removes the records of segments before name: PostgreSQL
// is done with them once it archives a later one.
func forgetBefore(spool, name string) {
	entries, err := os.ReadDir(spool)
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return
	}
	for _, e := range entries {
		if n := e.Name(); n < name {
			os.Remove(filepath.Join(spool, n))
		}
	}
}
