package s3store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/testrig"
)

// getProxy forwards to the S3 server and lets a test decide, per GET, to
// answer it itself or to cut its body after some bytes. It records each
// GET's Range and If-Match headers.
type getProxy struct {
	mu     sync.Mutex
	gets   []http.Header
	served int64 // body bytes passed to the client
	// on is called for the n-th GET (from 1); it returns how many body
	// bytes to pass before dropping the connection (-1: all), or answers
	// the request itself and returns -2.
	on func(n int, w http.ResponseWriter) int64
}

// seen returns the GETs' headers and the body bytes served so far.
func (p *getProxy) seen() ([]http.Header, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]http.Header(nil), p.gets...), p.served
}

func (p *getProxy) start(t *testing.T, upstream string) string {
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Query().Has("list-type") || r.URL.Query().Has("uploads") {
			rp.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		p.gets = append(p.gets, r.Header.Clone())
		n := len(p.gets)
		p.mu.Unlock()
		limit := p.on(n, w)
		if limit == -2 {
			return
		}
		rp.ServeHTTP(&cuttingWriter{ResponseWriter: w, limit: limit, p: p}, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// cuttingWriter passes limit body bytes (all when negative), then aborts
// the connection, as a network drop mid-download does.
type cuttingWriter struct {
	http.ResponseWriter
	limit, written int64
	p              *getProxy
}

func (c *cuttingWriter) Write(b []byte) (int, error) {
	// Counted before the write: the client may have read the bytes, and
	// the test looked at the count, before Write returns.
	if c.limit >= 0 && c.written+int64(len(b)) > c.limit {
		b = b[:c.limit-c.written]
		c.count(len(b))
		c.ResponseWriter.Write(b)
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	c.count(len(b))
	n, err := c.ResponseWriter.Write(b)
	c.written += int64(n)
	return n, err
}

func (c *cuttingWriter) count(n int) {
	c.p.mu.Lock()
	c.p.served += int64(n)
	c.p.mu.Unlock()
}

func (c *cuttingWriter) Flush() { c.ResponseWriter.(http.Flusher).Flush() }

// downloadRig is a store reached through a getProxy, holding one object.
func downloadRig(t *testing.T, p *getProxy, data []byte) (*s3store.Store, *s3store.Store) {
	t.Helper()
	srv := testrig.StartS3(t)
	direct, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "repo"})
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Put(t.Context(), "obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	o := srv.ClientOptions()
	o.Endpoint = p.start(t, srv.Endpoint)
	o.MaxAttempts = 3
	client, err := s3store.NewClient(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	viaProxy, err := s3store.New(client, s3store.Options{Bucket: srv.Bucket, Prefix: "repo"})
	if err != nil {
		t.Fatal(err)
	}
	return viaProxy, direct
}

func readAll(ctx context.Context, s *s3store.Store, key string) ([]byte, error) {
	rc, err := s.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// TestDownloadResumes: a download whose connection drops is resumed from
// the byte where it stopped, pinned to the object's ETag, and the bytes
// read are the object's.
func TestDownloadResumes(t *testing.T) {
	data := make([]byte, 3<<20)
	rand.Read(data)
	p := &getProxy{on: func(n int, _ http.ResponseWriter) int64 {
		if n <= 2 {
			return 1 << 20 // the first two answers break after 1 MiB
		}
		return -1
	}}
	s, _ := downloadRig(t, p, data)
	got, err := readAll(t.Context(), s, "obj")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("resumed download differs: %d bytes, want %d", len(got), len(data))
	}
	gets, served := p.seen()
	if len(gets) != 3 {
		t.Fatalf("%d GETs, want 3 (one and two resumes)", len(gets))
	}
	etag := ""
	for i, h := range gets {
		want := ""
		if i > 0 {
			want = fmt.Sprintf("bytes=%d-", i<<20)
			if etag = h.Get("If-Match"); etag == "" {
				t.Fatalf("resume %d is not pinned to the object's ETag", i)
			}
		}
		if got := h.Get("Range"); got != want {
			t.Fatalf("GET %d: Range %q, want %q", i+1, got, want)
		}
	}
	if served != int64(len(data)) {
		t.Fatalf("%d body bytes crossed the network for a %d-byte object: the resumes started over", served, len(data))
	}
	t.Logf("3 MiB read in 3 GETs, If-Match %s", etag)
}

// TestDownloadOfAChangedObjectFails: when the object is replaced between
// the break and the resume, the reader fails instead of splicing two
// versions together.
func TestDownloadOfAChangedObjectFails(t *testing.T) {
	data := make([]byte, 2<<20)
	rand.Read(data)
	var direct *s3store.Store
	p := &getProxy{}
	p.on = func(n int, _ http.ResponseWriter) int64 {
		switch n {
		case 1:
			return 1 << 20
		case 2: // before the resume, another writer replaces the object
			if err := direct.Put(context.Background(), "obj", bytes.NewReader(bytes.Repeat([]byte{7}, 2<<20))); err != nil {
				panic(err)
			}
		}
		return -1
	}
	var s *s3store.Store
	s, direct = downloadRig(t, p, data)
	got, err := readAll(t.Context(), s, "obj")
	if err == nil {
		t.Fatalf("a download spliced across a replaced object succeeded (%d bytes)", len(got))
	}
	if !strings.Contains(err.Error(), "obj") || !strings.Contains(err.Error(), "resume at byte 1048576") {
		t.Fatalf("error does not name the object and the resume: %v", err)
	}
	if bytes.Contains(got, bytes.Repeat([]byte{7}, 64)) {
		t.Fatal("bytes of the new version were returned after the old one's")
	}
}

// TestDownloadGivesUpAfterRepeatedBreaks: a connection that keeps breaking
// is resumed a bounded number of times, then the error names the object
// and the byte reached.
func TestDownloadGivesUpAfterRepeatedBreaks(t *testing.T) {
	data := make([]byte, 1<<20)
	rand.Read(data)
	p := &getProxy{on: func(int, http.ResponseWriter) int64 { return 64 << 10 }}
	s, _ := downloadRig(t, p, data)
	_, err := readAll(t.Context(), s, "obj")
	if err == nil {
		t.Fatal("a download that never completes succeeded")
	}
	if gets, _ := p.seen(); len(gets) != 6 {
		t.Fatalf("%d GETs before giving up, want 6 (the first and 5 resumes)", len(gets))
	}
	if want := "at byte " + strconv.Itoa(6*64<<10); !strings.Contains(err.Error(), "obj") || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name the object and %q", err, want)
	}
}

// TestGetRetries: 503 SlowDown and 429 answers to a GET are retried with
// backoff up to the attempt limit; past it the error is one line naming
// the object.
func TestGetRetries(t *testing.T) {
	data := []byte("the object's bytes")
	slowDown := func(w http.ResponseWriter, status int) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
	}
	var failures atomic.Int32
	p := &getProxy{on: func(n int, w http.ResponseWriter) int64 {
		if n <= int(failures.Load()) {
			slowDown(w, []int{http.StatusServiceUnavailable, http.StatusTooManyRequests}[n%2])
			return -2
		}
		return -1
	}}
	s, _ := downloadRig(t, p, data)

	failures.Store(2) // within the limit of 3 attempts
	got, err := readAll(t.Context(), s, "obj")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after two refusals: %q, %v", got, err)
	}
	if gets, _ := p.seen(); len(gets) != 3 {
		t.Fatalf("%d GETs, want 3", len(gets))
	}

	p.mu.Lock()
	p.gets = nil
	p.mu.Unlock()
	failures.Store(100)
	_, err = readAll(t.Context(), s, "obj")
	if err == nil {
		t.Fatal("a GET refused every time succeeded")
	}
	if gets, _ := p.seen(); len(gets) != 3 {
		t.Fatalf("%d GETs, want the 3 attempts allowed", len(gets))
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "obj") || !strings.Contains(msg, "SlowDown") {
		t.Fatalf("error is not one line naming the object and the server's answer: %q", msg)
	}
}
