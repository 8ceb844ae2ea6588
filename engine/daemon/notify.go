package daemon

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/drctl/drctl/engine/clock"
	"github.com/drctl/drctl/engine/schedule"
)

// Event is what a webhook receives, as a JSON body.
type Event struct {
	Event    string    `json:"event"`
	Job      string    `json:"job,omitempty"`
	Time     time.Time `json:"time"`
	Error    string    `json:"error,omitempty"`
	BackupID string    `json:"backup_id,omitempty"`
	Host     string    `json:"host"`
	// Missed is how many scheduled runs passed (job_missed); LagSeconds
	// the archive's lag (wal_lag).
	Missed     int     `json:"missed,omitempty"`
	LagSeconds float64 `json:"lag_seconds,omitempty"`
	// Process and Objective name an objective that failed.
	Process   string `json:"process,omitempty"`
	Objective string `json:"objective,omitempty"`
}

// SignatureHeader carries the HMAC-SHA256 of the body, keyed with the
// webhook's secret: "sha256=<hex>".
const SignatureHeader = "X-Drctl-Signature"

// Sign is the header value for body under secret.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// notifier delivers events to the webhooks in the background: a full
// queue drops the newest event (counted and logged) rather than block a
// job, and every delivery is retried with backoff.
type notifier struct {
	client   *http.Client
	clock    clock.Clock
	log      *slog.Logger
	metrics  *Metrics
	queue    chan delivery
	mu       sync.Mutex
	webhooks []Webhook
	attempts int
	backoff  time.Duration
}

type delivery struct {
	hook  Webhook
	event Event
}

const queueSize = 256

func newNotifier(client *http.Client, c clock.Clock, log *slog.Logger, m *Metrics) *notifier {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	// A redirect would carry the body and its signature to another host.
	noRedirect := *client
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	client = &noRedirect
	return &notifier{client: client, clock: c, log: log, metrics: m, queue: make(chan delivery, queueSize),
		attempts: 5, backoff: 2 * time.Second}
}

func (n *notifier) configure(hooks []Webhook) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.webhooks = hooks
}

// send queues e for every webhook that wants it; it never blocks.
func (n *notifier) send(e Event) {
	n.mu.Lock()
	hooks := n.webhooks
	n.mu.Unlock()
	for _, h := range hooks {
		if !h.Wants(e.Event) {
			continue
		}
		select {
		case n.queue <- delivery{h, e}:
		default:
			n.metrics.webhooks.WithLabelValues(e.Event, "dropped").Inc()
			n.log.Warn("webhook queue full: event dropped", "event", e.Event, "job", e.Job, "webhook", redactURL(h.URL))
		}
	}
}

// run delivers until ctx is done, then what is queued, for at most drain.
func (n *notifier) run(ctx context.Context, drain time.Duration) {
	for {
		select {
		case d := <-n.queue:
			n.deliver(ctx, d)
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
			defer cancel()
			for {
				select {
				case d := <-n.queue:
					n.deliver(dctx, d)
				default:
					return
				}
			}
		}
	}
}

func (n *notifier) deliver(ctx context.Context, d delivery) {
	body, err := json.Marshal(d.event)
	if err != nil {
		return
	}
	var last error
	for attempt := 1; attempt <= n.attempts; attempt++ {
		if last = n.post(ctx, d.hook, body); last == nil {
			n.metrics.webhooks.WithLabelValues(d.event.Event, "delivered").Inc()
			return
		}
		if attempt == n.attempts || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-n.clock.After(schedule.Backoff(attempt, n.backoff, time.Minute)):
		}
	}
	n.metrics.webhooks.WithLabelValues(d.event.Event, "failed").Inc()
	n.log.Error("webhook not delivered", "event", d.event.Event, "job", d.event.Job, "webhook", redactURL(d.hook.URL), "error", last)
}

func (n *notifier) post(ctx context.Context, h Webhook, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request: %s", redactURL(h.URL))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "drctl-daemon")
	if len(h.Secret) > 0 {
		req.Header.Set(SignatureHeader, Sign(h.Secret, body))
	}
	resp, err := n.client.Do(req)
	if err != nil {
		// The URL may carry a token: say what failed without it.
		if ue, ok := err.(*url.Error); ok {
			return fmt.Errorf("%s: %v", ue.Op, ue.Err)
		}
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

// redactURL keeps a webhook's scheme and host only: tokens live in paths
// (Slack's, say), queries and user info.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	out := u.Scheme + "://" + u.Host
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		out += "/…"
	}
	return out
}
