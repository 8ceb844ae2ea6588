package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// SpoolDir is where prefetched segments wait, beside the requested file
// (pg_wal/.drctl-prefetch during recovery).
const SpoolDir = ".drctl-prefetch"

// PrefetchOptions tune FetchWithPrefetch.
type PrefetchOptions struct {
	// Count is how many following segments to fetch ahead (0: none).
	Count int
	// Spawn starts a detached process that runs Prefetch(name, spool, count),
	// so that the download outlives this restore_command call.
	Spawn func(name, spool string, count int) error
}

// FetchWithPrefetch serves name from the prefetch spool when an earlier
// call fetched it ahead, otherwise from the archive; then, for segments,
// starts fetching the next ones. restore_command is called once per
// segment: without prefetch, recovery waits one round trip per 16 MiB.
func (a *Archive) FetchWithPrefetch(ctx context.Context, name, dest string, opt PrefetchOptions) error {
	spool := filepath.Join(filepath.Dir(dest), SpoolDir)
	served := false
	if IsSegmentName(name) {
		if err := os.Rename(filepath.Join(spool, name), dest); err == nil {
			served = true
		}
	}
	if !served {
		if err := a.Fetch(ctx, name, dest); err != nil {
			return err
		}
	}
	if IsSegmentName(name) && opt.Count > 0 && opt.Spawn != nil {
		if err := os.MkdirAll(spool, 0o700); err == nil {
			// A failed prefetch only costs speed: recovery fetches directly.
			opt.Spawn(name, spool, opt.Count)
		}
	}
	return nil
}

// Prefetch fetches the count segments after name (same timeline) into
// spool, a few at a time. Segments already spooled or being fetched by
// another prefetcher are skipped; ones not archived are skipped quietly.
func (a *Archive) Prefetch(ctx context.Context, name, spool string, count int) error {
	size := a.SegmentSize
	if size == 0 {
		size = DefaultSegmentSize
	}
	seg, ok := ParseSegmentName(name, size)
	if !ok {
		return fmt.Errorf("prefetch: %q is not a segment name", name)
	}
	cleanSpool(spool, seg, size)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := 0; i < count; i++ {
		if _, err := os.Stat(spool); err != nil {
			break // recovery is over and its spool removed: nothing to fetch for
		}
		seg = seg.Next()
		next := seg.Name(size)
		final := filepath.Join(spool, next)
		if _, err := os.Stat(final); err == nil {
			continue
		}
		// The lock is the claim: one prefetcher per segment.
		lock := filepath.Join(spool, "."+next+".lock")
		f, err := os.OpenFile(lock, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			continue
		}
		f.Close()
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer os.Remove(lock)
			// Never spool a partial segment: it may still grow.
			err := a.fetch(ctx, next, final, false)
			if err != nil && !errors.Is(err, ErrNotFound) {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// cleanSpool removes spooled segments recovery has passed (older than
// current on its timeline, or on other timelines), and stale locks.
func cleanSpool(spool string, current Segment, size int64) {
	entries, err := os.ReadDir(spool)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(spool, e.Name())
		if s, ok := ParseSegmentName(e.Name(), size); ok {
			if s.Timeline != current.Timeline || s.No <= current.No {
				os.Remove(path)
			}
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			os.Remove(path) // a lock or temporary file of a killed prefetcher
		}
	}
}
