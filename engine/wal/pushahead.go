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
	"syscall"
	"time"

	"github.com/drctl/drctl/storage"
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
	// Inode and CTime tell apart a file copied with its time kept (cp -a,
	// rsync -a, a restore): no copy keeps its inode change time.
	Inode uint64 `json:"inode"`
	CTime int64  `json:"ctime_ns"`
}

func recordOf(key string, fi os.FileInfo) aheadRecord {
	r := aheadRecord{Key: key, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		r.Inode, r.CTime = st.Ino, st.Ctim.Nano()
	}
	return r
}

// Bounds of pushing ahead: segments in flight at once beside the one
// asked for (each held compressed in memory), the largest segment pushed
// ahead, and how long the one asked for waits for them once it is stored.
const (
	aheadParallel = 2
	aheadMaxSize  = 64 << 20
	aheadWait     = 30 * time.Second
)

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
	aheadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if ahead <= 0 || !IsSegmentName(name) {
			return
		}
		// A repository still being opened: nothing is pushed ahead of
		// one that cannot be (each retry would compress them all again).
		if o, ok := a.Store.(interface {
			Wait(context.Context) (storage.Store, error)
		}); ok {
			if _, err := o.Wait(aheadCtx); err != nil {
				return
			}
		}
		// One zstd worker each: the one asked for keeps the others.
		one := *a
		one.Codec.Concurrency = 1
		var wg sync.WaitGroup
		sem := make(chan struct{}, aheadParallel)
		for _, next := range readyAfter(walDir, spool, name, ahead) {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				pushOneAhead(aheadCtx, &one, walDir, spool, next, log)
			}()
		}
		wg.Wait()
	}()
	res, err := a.Push(ctx, path)
	select {
	case <-done:
	case <-time.After(aheadWait):
		cancel() // a stalled push-ahead must not hold the archiver: its own call will push it
		<-done
	}
	// Only now: forgetting removes temporary records too, which the
	// push-aheads above were writing.
	if err == nil {
		forgetBefore(spool, name)
	}
	return res, err
}

// pushOneAhead stores one ready segment and records it, if the file is
// still the one PostgreSQL marked ready when it has been read.
func pushOneAhead(ctx context.Context, a *Archive, walDir, spool, next string, log *slog.Logger) {
	p := filepath.Join(walDir, next)
	fi, err := os.Stat(p)
	if err != nil || fi.Size() > aheadMaxSize {
		return
	}
	before := recordOf("", fi)
	local := *a
	local.beforeUpload = func() error {
		// Another archiver may have finished with it, and PostgreSQL
		// recycled the file under another name: then it is not ours.
		now, err := os.Stat(p)
		if err != nil || recordOf("", now) != before {
			return errors.New("the file changed while it was read")
		}
		if _, err := os.Stat(filepath.Join(walDir, "archive_status", next+".ready")); err != nil {
			return errors.New("no longer marked ready")
		}
		return nil
	}
	res, err := local.Push(ctx, p)
	if err != nil {
		log.Debug("push-ahead did not store it; its own archive_command will", "file", next, "error", err)
		return
	}
	if err := remember(spool, next, res.Key, fi); err != nil {
		log.Debug("could not record a pushed-ahead segment", "file", next, "error", err)
	}
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
	if json.Unmarshal(body, &rec) != nil || serr != nil || !strings.HasPrefix(rec.Key, Prefix+name+".") ||
		recordOf(rec.Key, fi) != rec {
		return nil
	}
	if _, err := a.Store.Stat(ctx, rec.Key); err != nil {
		return nil // not there (any more): push it the ordinary way
	}
	if a.Signer != nil {
		// Signing set up since, or a signature lost: Push signs.
		entry, ok := ParseKey(rec.Key)
		if !ok {
			return nil
		}
		if _, err := a.Store.Stat(ctx, SignatureKey(name, entry.Hash)); err != nil {
			return nil
		}
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
	body, err := json.Marshal(recordOf(key, fi))
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

// forgetBefore removes the records of segments before name (PostgreSQL is
// done with them once it archives a later one) and temporary records left
// by a push-ahead that was killed (".tmp-" sorts first). No push-ahead of
// this process may be writing one.
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
