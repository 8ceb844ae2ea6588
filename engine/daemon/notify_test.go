package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drctl/drctl/engine/clock"
)

// A webhook that fails is retried; one that keeps failing is given up on
// with one log line that does not show the URL's secret parts; a full
// queue drops events instead of blocking the caller.
func TestWebhookRetriesAndRedaction(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	var logs strings.Builder
	m := NewMetrics(time.Now)
	n := newNotifier(srv.Client(), clock.Real{}, slog.New(slog.NewTextHandler(&logs, nil)), m)
	n.backoff = time.Millisecond
	n.configure([]Webhook{{URL: srv.URL + "/hook?token=abc123"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.run(ctx, time.Second) }()
	n.send(Event{Event: EventJobFailed, Job: "dump"})
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.webhooks.WithLabelValues(EventJobFailed, "delivered")) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if calls.Load() != 3 || testutil.ToFloat64(m.webhooks.WithLabelValues(EventJobFailed, "delivered")) != 1 {
		t.Fatalf("%d calls; delivered %v", calls.Load(), testutil.ToFloat64(m.webhooks.WithLabelValues(EventJobFailed, "delivered")))
	}
	// A receiver that is down: every attempt fails, then one error line.
	n.configure([]Webhook{{URL: "http://127.0.0.1:1/services/T000/B000/secretpath"}})
	n.send(Event{Event: EventJobMissed, Job: "dump"})
	for testutil.ToFloat64(m.webhooks.WithLabelValues(EventJobMissed, "failed")) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if testutil.ToFloat64(m.webhooks.WithLabelValues(EventJobMissed, "failed")) != 1 {
		t.Fatal("the undeliverable event was not given up on")
	}
	if strings.Contains(logs.String(), "secretpath") || strings.Contains(logs.String(), "abc123") || strings.Count(logs.String(), "webhook not delivered") != 1 {
		t.Fatalf("log:\n%s", logs.String())
	}
	// Nobody draining: the queue fills, and send still returns at once.
	full := newNotifier(srv.Client(), clock.Real{}, slog.New(slog.DiscardHandler), m)
	full.configure([]Webhook{{URL: srv.URL}})
	start := time.Now()
	for range queueSize + 10 {
		full.send(Event{Event: EventWALLag})
	}
	if time.Since(start) > time.Second || testutil.ToFloat64(m.webhooks.WithLabelValues(EventWALLag, "dropped")) != 10 {
		t.Fatalf("a full queue: %s, dropped %v", time.Since(start), testutil.ToFloat64(m.webhooks.WithLabelValues(EventWALLag, "dropped")))
	}
}
