package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// A writer (backup, base backup, wal-receive) holds a lease in the
// repository while it runs: leases/<name>.json, renewed every
// LeaseInterval, expiring LeaseTTL after its last renewal; a cleaner waits
// a further LeaseTTL (clocks may differ by that much). Cleanup of
// leftovers deletes only what belongs to a writer whose lease has expired,
// never on age alone: a base backup of a large cluster may run for days.
const (
	LeaseInterval = time.Minute
	LeaseTTL      = 10 * time.Minute
	leasesPrefix  = "leases/"
	// legacyCutoff is how old the leftovers of a writer without any lease
	// (drctl before leases, or a writer killed before its lease was
	// written) must be before they are removed.
	legacyCutoff = 24 * time.Hour
)

// Lease kinds.
const (
	LeaseBackup     = "backup"
	LeaseBaseBackup = "basebackup"
	LeaseWALReceive = "wal-receive"
)

// Lease is the record a running writer keeps in the repository.
type Lease struct {
	Name       string    `json:"name"` // a backup id, or wal-receive-<slot>
	Kind       string    `json:"kind"`
	Host       string    `json:"host"`
	PID        int       `json:"pid"`
	Started    time.Time `json:"started"`
	Renewed    time.Time `json:"renewed"`
	Expires    time.Time `json:"expires"`
	TTLSeconds float64   `json:"ttl_seconds"`
	// Released: a job lease given back (job leases are never deleted:
	// their numbers go on).
	Released bool `json:"released,omitempty"`
}

// LeaseKey is where the lease called name lives.
func LeaseKey(name string) string { return leasesPrefix + name + ".json" }

// LeaseOptions tune a held lease; zero values take the defaults.
type LeaseOptions struct {
	Interval time.Duration // renewal period (LeaseInterval)
	TTL      time.Duration // expiry after the last renewal (LeaseTTL)
	Now      func() time.Time
	Logger   *slog.Logger
}

// Defaults fills in the writer's clock and logger where o has none.
func (o LeaseOptions) Defaults(now func() time.Time, log *slog.Logger) LeaseOptions {
	if o.Now == nil {
		o.Now = now
	}
	if o.Logger == nil {
		o.Logger = log
	}
	return o
}

// HeldLease is a lease this process renews until Release.
type HeldLease struct {
	st     storage.Store
	opt    LeaseOptions
	lease  Lease
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	lastOK time.Time
	err    error
	lapsed time.Duration // the longest gap between renewals, once too long
}

// filled gives the zero fields of o their defaults.
func (o LeaseOptions) filled(interval, ttl time.Duration) LeaseOptions {
	if o.Interval <= 0 {
		o.Interval = interval
	}
	if o.TTL <= 0 {
		o.TTL = ttl
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func validLeaseName(name string) bool {
	if name == "" || len(name) > 200 || strings.HasPrefix(name, ".") {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// AcquireLease writes the lease and renews it in the background until
// Release. It must be called before the writer stores its first object.
func AcquireLease(ctx context.Context, st storage.Store, name, kind string, opt LeaseOptions) (*HeldLease, error) {
	if !validLeaseName(name) {
		return nil, fmt.Errorf("invalid lease name %q", name)
	}
	opt = opt.filled(LeaseInterval, LeaseTTL)
	host, _ := os.Hostname()
	now := opt.Now().UTC()
	h := &HeldLease{st: st, opt: opt, stop: make(chan struct{}), done: make(chan struct{}),
		lease: Lease{Name: name, Kind: kind, Host: host, PID: os.Getpid(), Started: now, TTLSeconds: opt.TTL.Seconds()}}
	if err := h.renew(ctx); err != nil {
		return nil, fmt.Errorf("take lease %s: %w", LeaseKey(name), err)
	}
	go h.loop(ctx)
	return h, nil
}

func (h *HeldLease) renew(ctx context.Context) error {
	now := h.opt.Now().UTC()
	l := h.lease
	l.Renewed, l.Expires = now, now.Add(h.opt.TTL)
	body, err := json.Marshal(l)
	if err != nil {
		return err
	}
	// A renewal may take up to its interval, and never less than a few
	// seconds: a slow disk or a distant store is not a lost lease.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(h.opt.Interval, 10*time.Second))
	defer cancel()
	err = h.st.Put(rctx, LeaseKey(l.Name), bytes.NewReader(body))
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.err = err
		return err
	}
	if !h.lastOK.IsZero() && now.Sub(h.lastOK) > h.opt.TTL-h.opt.Interval {
		// A cleanup may have judged the lease expired during the gap: a
		// later renewal does not bring back what it removed.
		h.lapsed = now.Sub(h.lastOK)
	}
	h.lastOK, h.err = now, nil
	return nil
}

func (h *HeldLease) loop(ctx context.Context) {
	defer close(h.done)
	renewEvery(ctx, h.opt.Interval, h.stop, h.renew, func(err error) {
		h.opt.Logger.Warn("could not renew the writer's lease", "lease", LeaseKey(h.lease.Name), "error", err)
	})
}

// renewEvery calls renew every interval until stop is closed or ctx ends,
// reporting failures to failed.
func renewEvery(ctx context.Context, interval time.Duration, stop <-chan struct{}, renew func(context.Context) error, failed func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if err := renew(ctx); err != nil {
				failed(err)
			}
		}
	}
}

// Check reports an error when the lease may have expired in the eyes of a
// concurrent cleanup: not renewed for longer than the TTL less one
// interval. A writer checks it before committing: its objects may be gone.
func (h *HeldLease) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lapsed > 0 {
		return fmt.Errorf("lease %s went %s without renewal (expiry %s): a cleanup may have removed this writer's objects", LeaseKey(h.lease.Name), h.lapsed.Round(time.Second), h.opt.TTL)
	}
	if age := h.opt.Now().Sub(h.lastOK); age > h.opt.TTL-h.opt.Interval {
		return fmt.Errorf("lease %s was last renewed %s ago (expiry %s; last error: %v): a cleanup may have removed this writer's objects",
			LeaseKey(h.lease.Name), age.Round(time.Second), h.opt.TTL, h.err)
	}
	return nil
}

// Name is the lease's name.
func (h *HeldLease) Name() string { return h.lease.Name }

// Release stops renewing and deletes the lease.
func (h *HeldLease) Release(ctx context.Context) {
	close(h.stop)
	<-h.done
	if err := h.st.Delete(context.WithoutCancel(ctx), LeaseKey(h.lease.Name)); err != nil {
		h.opt.Logger.Warn("could not delete the writer's lease; it expires by itself", "lease", LeaseKey(h.lease.Name), "error", err)
	}
}

// LeaseState is what a reader knows of a writer's lease.
type LeaseState int

// The states of a lease.
const (
	LeaseAbsent  LeaseState = iota // no lease object: definitely not found
	LeaseLive                      // held, or unreadable (counted as held)
	LeaseExpired                   // not renewed within its TTL
)

// ReadLease returns the state of the lease called name at now. Any error
// but a definite not-found is returned: callers must then act as if the
// writer were alive.
func ReadLease(ctx context.Context, st storage.Store, name string, now time.Time) (LeaseState, *Lease, error) {
	key := LeaseKey(name)
	info, err := st.Stat(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return LeaseAbsent, nil, nil
	}
	if err != nil {
		return LeaseLive, nil, fmt.Errorf("read lease %s: %w", key, err)
	}
	rc, err := st.Get(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return LeaseAbsent, nil, nil
	}
	if err != nil {
		return LeaseLive, nil, fmt.Errorf("read lease %s: %w", key, err)
	}
	defer rc.Close()
	var l Lease
	if err := json.NewDecoder(rc).Decode(&l); err != nil {
		// Unreadable: keep the writer's objects; a person looks.
		return LeaseLive, nil, fmt.Errorf("lease %s is unreadable: %w", key, err)
	}
	return judgeLease(l, info.ModTime, now), &l, nil
}

// judgeLease: expired by the holder's clock and by the store's, with a
// further TTL of grace: clocks up to a TTL apart cannot make a live holder
// look dead.
func judgeLease(l Lease, stored, now time.Time) LeaseState {
	ttl := time.Duration(l.TTLSeconds * float64(time.Second))
	if ttl <= 0 || ttl > 24*time.Hour {
		ttl = LeaseTTL
	}
	// A holder renews within its TTL: an expiry further ahead of the
	// object's time than that (a forged or broken lease) counts from the
	// object's time.
	expires := l.Expires
	if limit := stored.Add(ttl); expires.After(limit) {
		expires = limit
	}
	if l.Released || now.After(expires.Add(ttl)) && now.After(stored.Add(2*ttl)) {
		return LeaseExpired
	}
	return LeaseLive
}

// Reaper decides, for the leftovers of killed writers, whether their
// writer is provably dead. It remembers what it read, for one cleanup.
type Reaper struct {
	st    storage.Store
	now   time.Time
	cache map[string]bool
	// liveWAL says whether any lease other than a backup's is live; nil
	// until asked.
	liveOther *bool
	Errors    []error // what could not be read: those leftovers were kept
}

// NewReaper starts a cleanup judged at now.
func NewReaper(st storage.Store, now time.Time) *Reaper {
	return &Reaper{st: st, now: now, cache: map[string]bool{}}
}

// BackupDead reports whether the writer of backup id is provably gone: its
// lease expired, or it has none and the id's start is over a day old.
func (r *Reaper) BackupDead(ctx context.Context, id string) bool {
	if dead, ok := r.cache[id]; ok {
		return dead
	}
	dead := false
	state, _, err := ReadLease(ctx, r.st, id, r.now)
	switch {
	case err != nil:
		r.Errors = append(r.Errors, err)
	case state == LeaseExpired:
		dead = true
	case state == LeaseAbsent:
		started, perr := time.Parse("20060102T150405Z", id[:16])
		dead = perr == nil && r.now.Sub(started) > legacyCutoff
	}
	r.cache[id] = dead
	return dead
}

// LeftoverDead is for storage.StaleCleaner: key is the object a leftover
// (temp file, unfinished upload) was to become, "" when unknown; started
// is when it was begun or last written.
func (r *Reaper) LeftoverDead(ctx context.Context, key string, started time.Time) bool {
	if id, _, ok := strings.Cut(strings.TrimPrefix(key, backupsPrefix), "/"); ok && strings.HasPrefix(key, backupsPrefix) && ValidID(id) {
		return r.BackupDead(ctx, id)
	}
	// WAL and unknown leftovers: WAL pushes are short and retried by
	// PostgreSQL; keep them while any other writer's lease is live.
	if r.now.Sub(started) <= legacyCutoff {
		return false
	}
	if r.liveOther == nil {
		live := true
		objs, err := r.st.List(ctx, leasesPrefix)
		if err != nil {
			r.Errors = append(r.Errors, err)
		} else {
			live = false
			for _, o := range objs {
				name := strings.TrimSuffix(strings.TrimPrefix(o.Key, leasesPrefix), ".json")
				if ValidID(name) {
					continue
				}
				state, _, err := ReadLease(ctx, r.st, name, r.now)
				if err != nil {
					r.Errors = append(r.Errors, err)
				}
				if state == LeaseLive {
					live = true
				}
			}
		}
		r.liveOther = &live
	}
	return !*r.liveOther
}
