package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// The index is a cache of the manifests, so that listing a repository of
// thousands of backups costs a handful of requests rather than one or more
// per backup. It is kept in shards by the month of the backup's id,
// index/backups-YYYYMM.json, each holding the manifests' bytes (and their
// signatures) as they are stored, with the size and modification time the
// listing showed for the manifest.
//
// The manifests stay the truth. A reader lists backups/ as before; a
// manifest the index lacks, or holds with another size or time, or whose
// copy there does not parse or verify, is read from its own object; an
// index entry whose manifest is gone is dropped. What the reader learned is
// written back to the shards that changed (best effort: the index is only
// a cache, and a reader without write access just does not repair it).
// Writers do not touch the index: a backup committed at any moment — while
// another process rewrites a shard included — is in the listing, so it is
// listed, and the next reader adds it. Deleting every index/ object is
// always safe; the next list rebuilds it.
const indexPrefix = "index/"

// indexFormat is the shards' format version.
const indexFormat = 1

type indexEntry struct {
	ID        string    `json:"id"`
	Size      int64     `json:"size"`     // the manifest object's, as listed
	ModTime   time.Time `json:"mod_time"` // likewise
	Manifest  string    `json:"manifest"` // its bytes
	Signature string    `json:"signature,omitempty"`
	SigSize   int64     `json:"signature_size,omitempty"`
	SigTime   time.Time `json:"signature_mod_time,omitempty"`
}

type indexShard struct {
	Format  int          `json:"format"`
	Entries []indexEntry `json:"entries"`
}

// Bounds on what is read of the index (it comes from the repository): a
// shard (a month of backups) and its entries, how many shards, and the
// bytes of all of them. What is over them is not read, and the manifests
// are read instead.
const (
	maxShard        = 32 << 20
	maxShardEntries = 50_000
	maxShards       = 600 // 50 years of months
	maxIndexBytes   = 256 << 20
)

var shardName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^index/backups-[0-9]{6}\.json$`) })

func shardKey(id string) string { return indexPrefix + "backups-" + id[:6] + ".json" }

// readIndex loads the shards, in parallel, and names those that held
// anything it did not keep (they are written again). A shard that cannot
// be read or parsed counts as empty: the manifests are read instead.
func readIndex(ctx context.Context, st storage.Store) (map[string]indexEntry, map[string]bool) {
	out := map[string]indexEntry{}
	dirty := map[string]bool{}
	objs, err := st.List(ctx, indexPrefix)
	if err != nil {
		return out, dirty
	}
	var shards []storage.ObjectInfo
	var total int64
	for _, o := range objs {
		if !shardName().MatchString(o.Key) || o.Size > maxShard || len(shards) >= maxShards || total+o.Size > maxIndexBytes {
			continue
		}
		total += o.Size
		shards = append(shards, o)
	}
	var mu sync.Mutex
	each(len(shards), 16, func(i int) error {
		key := shards[i].Key
		entries, clean := readShard(ctx, st, key)
		mu.Lock()
		defer mu.Unlock()
		if !clean {
			dirty[key] = true
		}
		for _, e := range entries {
			out[e.ID] = e
		}
		return nil
	})
	return out, dirty
}

// readShard decodes one shard entry by entry, keeping the well-formed
// entries that belong in it; clean is false when anything was dropped.
func readShard(ctx context.Context, st storage.Store, key string) (kept []indexEntry, clean bool) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return nil, false
	}
	defer rc.Close()
	dec := json.NewDecoder(io.LimitReader(rc, maxShard))
	expect := func(want json.Delim) bool {
		t, err := dec.Token()
		return err == nil && t == want
	}
	if !expect('{') {
		return nil, false
	}
	clean, format := true, 0
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, false
		}
		switch t {
		case "format":
			if dec.Decode(&format) != nil || format != indexFormat {
				return nil, false
			}
		case "entries":
			if !expect('[') {
				return nil, false
			}
			for n := 0; dec.More(); n++ {
				var e indexEntry
				if n >= maxShardEntries || dec.Decode(&e) != nil {
					return nil, false
				}
				if !ValidID(e.ID) || shardKey(e.ID) != key || e.Size != int64(len(e.Manifest)) || e.Size > maxManifest ||
					e.SigSize != int64(len(e.Signature)) || e.SigSize > 64<<10 {
					clean = false
					continue
				}
				kept = append(kept, e)
			}
			if !expect(']') {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	if format != indexFormat {
		return nil, false
	}
	return kept, clean
}

// alongsideIndex reads the index while list runs (both are round trips
// to the store), and returns the index, its shards to write again, and
// list's error.
func alongsideIndex(ctx context.Context, st storage.Store, list func() error) (map[string]indexEntry, map[string]bool, error) {
	type read struct {
		index map[string]indexEntry
		dirty map[string]bool
	}
	done := make(chan read, 1)
	go func() {
		index, dirty := readIndex(ctx, st)
		done <- read{index, dirty}
	}()
	err := list()
	r := <-done
	return r.index, r.dirty, err
}

// each runs f(0..n-1), at most limit at once, and returns the first error.
func each(n, limit int, f func(int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	sem := make(chan struct{}, limit)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				once.Do(func() { first = err })
			}
		}()
	}
	wg.Wait()
	return first
}

// listed is what one backup's listing showed.
type listed struct {
	manifest, signature storage.ObjectInfo
	signed              bool
}

// listManifests lists the repository with the help of the index: every
// manifest the listing shows, each from the index when its copy there is
// current and checks out, else from its object.
func listManifests(ctx context.Context, st storage.Store, v Verifier) ([]*Manifest, map[string]bool, error) {
	var objs []storage.ObjectInfo
	index, dirty, err := alongsideIndex(ctx, st, func() (err error) {
		objs, err = st.List(ctx, backupsPrefix)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]*listed{}
	verified := map[string]bool{} // backups with a verification record
	var ids []string
	for _, o := range objs {
		id, file, ok := strings.Cut(strings.TrimPrefix(o.Key, backupsPrefix), "/")
		if ok && file == "verified.json" {
			verified[id] = true
		}
		if !ok || !ValidID(id) || (file != "manifest.json" && file != "manifest.json.sig") {
			continue
		}
		l := seen[id]
		if l == nil {
			l = &listed{}
			seen[id] = l
		}
		if file == "manifest.json" {
			l.manifest = o
			ids = append(ids, id)
		} else {
			l.signature, l.signed = o, true
		}
	}
	out := make([]*Manifest, len(ids))
	fresh := make([]*indexEntry, len(ids)) // entries read from the objects
	err = each(len(ids), 32, func(i int) error {
		id, l := ids[i], seen[ids[i]]
		if e, ok := index[id]; ok && e.Size == l.manifest.Size && e.ModTime.Equal(l.manifest.ModTime) &&
			(e.Signature != "") == l.signed && e.SigSize == l.signature.Size && e.SigTime.Equal(l.signature.ModTime) {
			if m, err := fromEntry(e, v); err == nil {
				out[i] = m
				return nil
			}
			// A copy that does not parse or verify loses: read the object.
		}
		e, err := readEntry(ctx, st, id, l, v)
		if err != nil {
			return err
		}
		m, err := fromEntry(*e, v)
		if err != nil {
			return fmt.Errorf("manifest of backup %s: %w", id, err)
		}
		out[i], fresh[i] = m, e
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	writeIndex(ctx, st, index, dirty, ids, fresh)
	sortByEnd(out)
	return out, verified, nil
}

// readEntry reads backup id's manifest and signature from their objects.
func readEntry(ctx context.Context, st storage.Store, id string, l *listed, v Verifier) (*indexEntry, error) {
	body, err := readManifest(ctx, st, id)
	if err != nil {
		return nil, err
	}
	e := &indexEntry{ID: id, Size: l.manifest.Size, ModTime: l.manifest.ModTime, Manifest: string(body)}
	if l.signed {
		rc, err := st.Get(ctx, SignatureKey(id))
		if err == nil {
			sig, rerr := io.ReadAll(io.LimitReader(rc, 64<<10))
			rc.Close()
			if rerr != nil {
				return nil, fmt.Errorf("read signature of %s: %w", id, rerr)
			}
			e.Signature, e.SigSize, e.SigTime = string(sig), l.signature.Size, l.signature.ModTime
		} else if !errors.Is(err, storage.ErrNotExist) && v != nil {
			return nil, fmt.Errorf("read signature of %s: %w", id, err)
		}
		// Without a verifier the signature is only cached: one that cannot
		// be read now is read again next time (the entry will not match).
	}
	return e, nil
}

// fromEntry parses (and with a verifier, verifies) a manifest's bytes.
func fromEntry(e indexEntry, v Verifier) (*Manifest, error) {
	body := []byte(e.Manifest)
	if v != nil {
		if e.Signature == "" {
			return nil, fmt.Errorf("%w (no %s), and allowed signers are configured: refusing", ErrUnsigned, SignatureKey(e.ID))
		}
		if _, err := v.Verify(body, []byte(e.Signature)); err != nil {
			if !errors.Is(err, ErrBadSignature) {
				err = fmt.Errorf("%w: %v", ErrBadSignature, err)
			}
			return nil, fmt.Errorf("signature %s: %w", SignatureKey(e.ID), err)
		}
	}
	return parseManifest(e.ID, body)
}

// writeIndex writes back the shards whose content changed: manifests read
// from their objects, and entries whose manifest is gone. Errors are
// ignored: the index is a cache, and a reader may have no write access.
func writeIndex(ctx context.Context, st storage.Store, old map[string]indexEntry, dirty map[string]bool, ids []string, fresh []*indexEntry) {
	shards := map[string][]indexEntry{}
	changed := map[string]bool{}
	for key := range dirty {
		changed[key] = true
	}
	current := map[string]bool{}
	for i, id := range ids {
		current[id] = true
		key := shardKey(id)
		if fresh[i] != nil {
			shards[key] = append(shards[key], *fresh[i])
			changed[key] = true
		} else {
			shards[key] = append(shards[key], old[id])
		}
	}
	for id := range old {
		if !current[id] {
			changed[shardKey(id)] = true // its backup is gone
		}
	}
	for key := range changed {
		entries := shards[key]
		if len(entries) == 0 {
			st.Delete(ctx, key)
			continue
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
		body, err := json.Marshal(indexShard{Format: indexFormat, Entries: entries})
		if err != nil {
			continue
		}
		st.Put(ctx, key, bytes.NewReader(body))
	}
}

// latestCandidates is, for resolving "latest" without reading the whole
// listing, every backup as the index describes it plus those the index
// lacks (read from their objects), oldest first. The entries come from the
// index unverified: the one chosen is read again from its object. ok is
// false when the store cannot list directories or the index is too far
// behind, and the caller lists instead.
func latestCandidates(ctx context.Context, st storage.Store, v Verifier) ([]*Manifest, bool, error) {
	dl, isDL := st.(storage.DirLister)
	if !isDL {
		return nil, false, nil
	}
	var dirs []string
	index, _, err := alongsideIndex(ctx, st, func() (err error) {
		dirs, err = dl.ListDirs(ctx, backupsPrefix)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	var known []*Manifest
	var missing []string
	for _, id := range dirs {
		if !ValidID(id) {
			continue
		}
		e, ok := index[id]
		if !ok {
			missing = append(missing, id)
			continue
		}
		m, err := fromEntry(e, v)
		if err != nil {
			missing = append(missing, id) // the copy loses: read the object
			continue
		}
		known = append(known, m)
	}
	if len(missing) > 64 {
		return nil, false, nil // the index is far behind: list (which repairs it)
	}
	loaded := make([]*Manifest, len(missing))
	err = each(len(missing), 16, func(i int) error {
		m, err := Load(ctx, st, missing[i], v)
		if errors.Is(err, ErrUnknownBackup) {
			return nil // a backup in progress, or the leftovers of one
		}
		loaded[i] = m
		return err
	})
	if err != nil {
		return nil, false, err
	}
	for _, m := range loaded {
		if m != nil {
			known = append(known, m)
		}
	}
	sortByEnd(known)
	return known, true, nil
}

// sortByEnd orders backups oldest first: by end time, then id.
func sortByEnd(ms []*Manifest) {
	sort.SliceStable(ms, func(i, j int) bool {
		if !ms[i].EndTime.Equal(ms[j].EndTime) {
			return ms[i].EndTime.Before(ms[j].EndTime)
		}
		return ms[i].ID < ms[j].ID
	})
}
