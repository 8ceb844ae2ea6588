// Package storagetest is the conformance suite every storage backend runs.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/drctl/drctl/storage"
)

// Options tune the suite for a backend.
type Options struct {
	// LargeSize is the size of the large-object test (default 110 MiB).
	LargeSize int64
	// RacyPutIfAbsent is set for backends that cannot make PutIfAbsent
	// atomic against a concurrent writer.
	RacyPutIfAbsent bool
}

// Run runs the suite. newStore returns an empty store.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store, opt Options) {
	if opt.LargeSize == 0 {
		opt.LargeSize = 110 << 20
	}
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore(t)) })
	t.Run("NotExist", func(t *testing.T) { testNotExist(t, newStore(t)) })
	t.Run("ListPrefix", func(t *testing.T) { testListPrefix(t, newStore(t)) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, newStore(t)) })
	t.Run("PutIfAbsent", func(t *testing.T) { testPutIfAbsent(t, newStore(t), opt) })
	t.Run("CancelledPutInvisible", func(t *testing.T) { testCancelledPut(t, newStore(t)) })
	t.Run("FailedReaderInvisible", func(t *testing.T) { testFailedReader(t, newStore(t)) })
	t.Run("EmptyObject", func(t *testing.T) { testEmpty(t, newStore(t)) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, newStore(t)) })
	t.Run("Large", func(t *testing.T) { testLarge(t, newStore(t), opt.LargeSize) })
	t.Run("ListDirs", func(t *testing.T) { testListDirs(t, newStore(t)) })
}

// testListDirs: a store that lists directories names each one with an
// object below it, once, and nothing outside the prefix.
func testListDirs(t *testing.T, s storage.Store) {
	dl, ok := s.(storage.DirLister)
	if !ok {
		return // callers list objects instead
	}
	for _, key := range []string{"backups/20261101T000000Z-aaaaaa/manifest.json", "backups/20261101T000000Z-aaaaaa/dump",
		"backups/20261102T000000Z-bbbbbb/deep/er/x", "backupsnot/zzz/y", "other/c/d"} {
		if err := s.Put(ctx(t), key, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := dl.ListDirs(ctx(t), "backups/")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "20261101T000000Z-aaaaaa,20261102T000000Z-bbbbbb" {
		t.Fatalf("ListDirs(backups/) = %v", got)
	}
	if got, err := dl.ListDirs(ctx(t), "nothing/"); err != nil || len(got) != 0 {
		t.Fatalf("ListDirs of an empty prefix = %v, %v", got, err)
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func get(t *testing.T, s storage.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func put(t *testing.T, s storage.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(ctx(t), key, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put %s: %v", key, err)
	}
}

func keys(t *testing.T, s storage.Store, prefix string) []string {
	t.Helper()
	infos, err := s.List(ctx(t), prefix)
	if err != nil {
		t.Fatalf("List %q: %v", prefix, err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, i.Key)
	}
	return out
}

func testRoundTrip(t *testing.T, s storage.Store) {
	data := []byte("hello, repository\x00\xff")
	put(t, s, "dir/sub/object.bin", data)
	if got := get(t, s, "dir/sub/object.bin"); !bytes.Equal(got, data) {
		t.Fatalf("Get returned %q, want %q", got, data)
	}
	info, err := s.Stat(ctx(t), "dir/sub/object.bin")
	if err != nil || info.Size != int64(len(data)) || info.Key != "dir/sub/object.bin" {
		t.Fatalf("Stat = %+v, %v; want size %d", info, err, len(data))
	}
	if got := keys(t, s, "dir/"); len(got) != 1 || got[0] != "dir/sub/object.bin" {
		t.Fatalf("List right after Put = %v", got)
	}
	if err := s.Delete(ctx(t), "dir/sub/object.bin"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx(t), "dir/sub/object.bin"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("Stat after Delete: %v, want ErrNotExist", err)
	}
	if got := keys(t, s, "dir/"); len(got) != 0 {
		t.Fatalf("List after Delete = %v", got)
	}
}

func testNotExist(t *testing.T, s storage.Store) {
	if _, err := s.Get(ctx(t), "missing/object"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("Get missing: %v, want ErrNotExist", err)
	}
	if _, err := s.Stat(ctx(t), "missing/object"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("Stat missing: %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx(t), "missing/object"); err != nil {
		t.Fatalf("Delete missing: %v, want nil", err)
	}
	put(t, s, "a/b", []byte("x"))
	// A "directory" is not an object.
	if _, err := s.Stat(ctx(t), "a"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("Stat of a key prefix: %v, want ErrNotExist", err)
	}
	if got := keys(t, s, "nothing-here/"); len(got) != 0 {
		t.Fatalf("List of empty prefix = %v", got)
	}
}

func testListPrefix(t *testing.T, s storage.Store) {
	for _, k := range []string{"a/b", "a/c/d", "ab", "b", "a/c/e"} {
		put(t, s, k, []byte(k))
	}
	want := map[string]string{
		"a/":   "[a/b a/c/d a/c/e]",
		"a":    "[a/b a/c/d a/c/e ab]",
		"a/c/": "[a/c/d a/c/e]",
		"":     "[a/b a/c/d a/c/e ab b]",
		"zz":   "[]",
	}
	for prefix, w := range want {
		if got := fmt.Sprint(keys(t, s, prefix)); got != w {
			t.Errorf("List(%q) = %s, want %s", prefix, got, w)
		}
	}
}

func testOverwrite(t *testing.T, s storage.Store) {
	put(t, s, "k", []byte("first"))
	put(t, s, "k", []byte("second, longer"))
	if got := string(get(t, s, "k")); got != "second, longer" {
		t.Fatalf("after overwrite Get = %q", got)
	}
}

func testPutIfAbsent(t *testing.T, s storage.Store, opt Options) {
	if err := s.PutIfAbsent(ctx(t), "lock", bytes.NewReader([]byte("one"))); err != nil {
		t.Fatalf("first PutIfAbsent: %v", err)
	}
	err := s.PutIfAbsent(ctx(t), "lock", bytes.NewReader([]byte("two")))
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second PutIfAbsent: %v, want ErrExists", err)
	}
	if got := string(get(t, s, "lock")); got != "one" {
		t.Fatalf("PutIfAbsent replaced the object: %q", got)
	}
	if opt.RacyPutIfAbsent {
		return
	}
	const racers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.PutIfAbsent(ctx(t), "race", bytes.NewReader([]byte(fmt.Sprint(i))))
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, storage.ErrExists) {
				t.Errorf("racer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d of %d racing PutIfAbsent calls won, want exactly 1", wins, racers)
	}
}

// slowSource yields n bytes, then calls mid and blocks until ctx ends.
type slowSource struct {
	ctx  context.Context
	n    int
	mid  func()
	done bool
}

func (s *slowSource) Read(p []byte) (int, error) {
	if s.n > 0 {
		k := min(len(p), s.n)
		for i := range p[:k] {
			p[i] = byte(i)
		}
		s.n -= k
		return k, nil
	}
	if !s.done {
		s.done = true
		s.mid()
	}
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

func testCancelledPut(t *testing.T, s storage.Store) {
	put(t, s, "keep", []byte("old content"))
	for _, key := range []string{"cancelled", "keep"} {
		cctx, cancel := context.WithCancel(ctx(t))
		// 20 MiB: past the first part of a multipart upload.
		src := &slowSource{ctx: cctx, n: 20 << 20, mid: cancel}
		err := s.Put(cctx, key, src)
		cancel()
		if err == nil {
			t.Fatalf("Put %s with a cancelled context succeeded", key)
		}
	}
	if _, err := s.Stat(ctx(t), "cancelled"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("a cancelled Put is visible: %v", err)
	}
	if got := fmt.Sprint(keys(t, s, "")); got != "[keep]" {
		t.Fatalf("List after cancelled Puts = %s, want [keep]", got)
	}
	if got := string(get(t, s, "keep")); got != "old content" {
		t.Fatalf("a cancelled Put damaged the existing object: %q", got[:min(len(got), 40)])
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("source broke")
	}
	k := min(len(p), f.n)
	clear(p[:k])
	f.n -= k
	return k, nil
}

func testFailedReader(t *testing.T, s storage.Store) {
	for _, size := range []int{1000, 20 << 20} {
		err := s.Put(ctx(t), "broken", &failingReader{n: size})
		if err == nil {
			t.Fatalf("Put from a failing reader (%d bytes) succeeded", size)
		}
		if _, err := s.Stat(ctx(t), "broken"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("a failed Put (%d bytes) is visible: %v", size, err)
		}
	}
	if got := keys(t, s, ""); len(got) != 0 {
		t.Fatalf("List after failed Puts = %v", got)
	}
}

func testEmpty(t *testing.T, s storage.Store) {
	put(t, s, "empty", nil)
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Fatalf("empty object read back as %d bytes", len(got))
	}
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	for _, k := range []string{"", "/abs", "a/../b", "a//b", "trailing/", "./x"} {
		if err := s.Put(ctx(t), k, bytes.NewReader(nil)); err == nil {
			t.Errorf("Put(%q) accepted an invalid key", k)
		}
	}
}

// prng is a deterministic byte stream that does not compress.
type prng struct {
	r *rand.ChaCha8
	n int64
}

func (p *prng) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	p.r.Read(b)
	p.n -= int64(len(b))
	return len(b), nil
}

func testLarge(t *testing.T, s storage.Store, size int64) {
	seed := [32]byte{1, 2, 3}
	want := sha256.New()
	io.Copy(want, &prng{r: rand.NewChaCha8(seed), n: size})
	// Odd-sized writes, as a compressor makes them.
	if err := s.Put(ctx(t), "large/object", io.LimitReader(&prng{r: rand.NewChaCha8(seed), n: size}, size)); err != nil {
		t.Fatalf("Put %d bytes: %v", size, err)
	}
	info, err := s.Stat(ctx(t), "large/object")
	if err != nil || info.Size != size {
		t.Fatalf("Stat = %+v, %v; want %d bytes", info, err, size)
	}
	rc, err := s.Get(ctx(t), "large/object")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := sha256.New()
	n, err := io.Copy(got, rc)
	if err != nil || n != size {
		t.Fatalf("read back %d bytes: %v", n, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("large object read back with different content")
	}
}
