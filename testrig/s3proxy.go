package testrig

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is what the proxy does to one request instead of forwarding it
// plainly.
type Fault int

// Faults an S3 server or the network between produce.
const (
	FaultNone      Fault = iota
	Fault503             // 503 SlowDown, the body S3 sends
	Fault429             // 429 Too Many Requests
	FaultReset           // the connection is closed before any answer
	FaultSlow            // the answer comes after a delay
	FaultTruncate        // a GET's body stops half-way (connection dropped)
	FaultLostReply       // a write is carried out, but its answer is lost
)

func (f Fault) String() string {
	return [...]string{"none", "503", "429", "reset", "slow", "truncate", "lost-reply"}[f]
}

// S3Proxy stands between drctl and the S3 server on a loopback port. It
// adds latency to every request and injects faults, per S3 operation, at
// a rate: what a distant region or a struggling server does, on loopback.
type S3Proxy struct {
	// Endpoint is the proxy's URL, for AWS_ENDPOINT_URL_S3.
	Endpoint string

	mu       sync.Mutex
	latency  time.Duration
	rate     float64
	methods  map[string]bool // S3 operations faults apply to; nil: all
	rng      *rand.Rand
	counts   map[string]int // "Method/fault" -> times injected
	requests map[string]int
	offsets  map[string]int
	nth      map[string]int
	crc32c   int // requests that carried x-amz-checksum-crc32c
	srv      *http.Server
}

// StartS3Proxy proxies to the server at upstream (an http:// endpoint).
func StartS3Proxy(t testing.TB, upstream string, seed uint64) *S3Proxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &S3Proxy{Endpoint: "http://" + l.Addr().String(), rng: rand.New(rand.NewPCG(seed, 1)),
		counts: map[string]int{}, requests: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	quiet := log.New(io.Discard, "", 0)
	rp.ErrorLog = quiet
	p.srv = &http.Server{Handler: p.handler(rp), ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	go p.srv.Serve(l)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// SetLatency adds d before every request is forwarded.
func (p *S3Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// SetFaults injects a fault into the given share (0..1) of the requests of
// the named S3 operations (Put, Get, Stat, List, Delete; none: all).
func (p *S3Proxy) SetFaults(rate float64, operations ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = rate
	p.methods = nil
	if len(operations) > 0 {
		p.methods = map[string]bool{}
		for _, m := range operations {
			p.methods[m] = true
		}
	}
}

// Injected returns how many faults were injected, by "Operation/fault",
// and how many requests each operation saw.
func (p *S3Proxy) Injected() (faults, requests map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	faults, requests = map[string]int{}, map[string]int{}
	for k, v := range p.counts {
		faults[k] = v
	}
	for k, v := range p.requests {
		requests[k] = v
	}
	return faults, requests
}

// Checksummed is how many requests carried an x-amz-checksum-crc32c header.
func (p *S3Proxy) Checksummed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.crc32c
}

// operation names the S3 operation of a request, as drctl's store methods
// call them: Put (PutObject, multipart parts and their creation and
// completion), Get, Stat (HEAD), List, Delete (objects and aborted uploads).
func operation(r *http.Request) string {
	q := r.URL.Query()
	switch r.Method {
	case http.MethodHead:
		return "Stat"
	case http.MethodGet:
		if q.Has("list-type") || q.Has("uploads") || q.Has("prefix") {
			return "List"
		}
		return "Get"
	case http.MethodDelete:
		return "Delete"
	default:
		return "Put"
	}
}

// decide picks the fault of a request. Faults come at the rate exactly
// (every 1/rate-th request of an operation, from a random offset) and take
// turns through the kinds, so every kind is injected once an operation
// has seen enough requests; the seed varies where.
func (p *S3Proxy) decide(op string) (Fault, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests[op]++
	if p.rate <= 0 || (p.methods != nil && !p.methods[op]) {
		return FaultNone, p.latency
	}
	every := max(1, int(1/p.rate+0.5))
	if p.offsets == nil {
		p.offsets, p.nth = map[string]int{}, map[string]int{}
	}
	off, ok := p.offsets[op]
	if !ok {
		off = p.rng.IntN(every)
		p.offsets[op] = off
	}
	if p.requests[op]%every != off {
		return FaultNone, p.latency
	}
	// The operation's own kind first: a cut body for reads, a lost
	// answer for writes.
	faults := []Fault{Fault503, Fault429, FaultReset, FaultSlow}
	switch op {
	case "Get":
		faults = append([]Fault{FaultTruncate}, faults...)
	case "Put", "Delete":
		faults = append([]Fault{FaultLostReply}, faults...)
	}
	f := faults[p.nth[op]%len(faults)]
	p.nth[op]++
	if f != FaultTruncate { // counted when a body was really cut
		p.counts[op+"/"+f.String()]++
	}
	return f, p.latency
}

func (p *S3Proxy) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := operation(r)
		if r.Header.Get("X-Amz-Checksum-Crc32c") != "" {
			p.mu.Lock()
			p.crc32c++
			p.mu.Unlock()
		}
		fault, latency := p.decide(op)
		if latency > 0 {
			time.Sleep(latency)
		}
		switch fault {
		case Fault503:
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		case Fault429:
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>TooManyRequests</Code><Message>Too many requests</Message></Error>`)
			return
		case FaultReset:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					if tc, ok := conn.(*net.TCPConn); ok {
						tc.SetLinger(0) // RST, not a clean FIN
					}
					conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		case FaultSlow:
			time.Sleep(300 * time.Millisecond)
		case FaultTruncate:
			next.ServeHTTP(&truncatingWriter{ResponseWriter: w, cut: func() {
				p.mu.Lock()
				p.counts[op+"/"+FaultTruncate.String()]++
				p.mu.Unlock()
			}}, r)
			return
		case FaultLostReply:
			next.ServeHTTP(&discardWriter{header: http.Header{}}, r)
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		next.ServeHTTP(w, r)
	})
}

// truncatingWriter passes the headers (Content-Length included) and half
// of the body, then drops the connection.
type truncatingWriter struct {
	http.ResponseWriter
	limit, written int64
	status         int
	cut            func() // told when the body is cut
}

func (t *truncatingWriter) WriteHeader(status int) {
	t.status = status
	if n, err := strconv.ParseInt(t.Header().Get("Content-Length"), 10, 64); err == nil && status < 300 {
		t.limit = n / 2
	}
	t.ResponseWriter.WriteHeader(status)
}

func (t *truncatingWriter) Write(b []byte) (int, error) {
	if t.limit <= 0 {
		return t.ResponseWriter.Write(b)
	}
	if left := t.limit - t.written; int64(len(b)) > left {
		n, _ := t.ResponseWriter.Write(b[:left])
		t.written += int64(n)
		if f, ok := t.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		t.cut()
		panic(http.ErrAbortHandler) // the server drops the connection
	}
	n, err := t.ResponseWriter.Write(b)
	t.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (t *truncatingWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// discardWriter takes the server's answer and throws it away.
type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// Env is the S3 environment of s with the proxy as the endpoint.
func (p *S3Proxy) Env(s *S3) []string {
	var env []string
	for _, kv := range s.Env() {
		if strings.HasPrefix(kv, "AWS_ENDPOINT_URL_S3=") {
			kv = "AWS_ENDPOINT_URL_S3=" + p.Endpoint
		}
		env = append(env, kv)
	}
	return env
}
