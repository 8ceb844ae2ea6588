package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// The daemon's records live under jobs/<job>/ (FORMAT.md, "Jobs"):
//
//	jobs/<job>/state.json                    the job's last run, for a restarted daemon
//	jobs/<job>/runs/<start>-<run id>.json    one record per run, <start> as 20261127T101500.000Z
//	jobs/<job>/lease/<number>.json           who runs the job now (see AcquireJobLease)
//
// A job's state and records are written only by the holder of its lease.
const jobsPrefix = "jobs/"

// ValidJobName: lowercase letters, digits and dashes, at most 63, as a
// Kubernetes label value allows.
func ValidJobName(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !lowerAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// lowerAlnum reports whether c is a-z or 0-9. (Checked by hand, not with
// regular expressions: compiling those is paid by every drctl start.)
func lowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// Run results.
const (
	RunSuccess = "success"
	RunFailure = "failure"
)

// JobRun is the record of one run of a daemon job.
type JobRun struct {
	Job       string    `json:"job"`
	RunID     string    `json:"run_id"`
	Type      string    `json:"type"`
	Scheduled time.Time `json:"scheduled"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	Result    string    `json:"result"`
	Error     string    `json:"error,omitempty"`
	Attempts  int       `json:"attempts"`
	// What a backup job stored.
	BackupID    string `json:"backup_id,omitempty"`
	Database    string `json:"database,omitempty"`
	StoredBytes int64  `json:"stored_bytes,omitempty"`
	RawBytes    int64  `json:"raw_bytes,omitempty"`
	Host        string `json:"host"`
}

// JobState is a job's last run, kept so that a daemon that restarts (or
// another one) knows what ran: the scheduled time last claimed, the last
// success and failure.
type JobState struct {
	Job           string    `json:"job"`
	LastScheduled time.Time `json:"last_scheduled"`
	LastRunID     string    `json:"last_run_id,omitempty"`
	LastResult    string    `json:"last_result,omitempty"`
	LastSuccess   time.Time `json:"last_success,omitzero"`
	LastFailure   time.Time `json:"last_failure,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	LastBackupID  string    `json:"last_backup_id,omitempty"`
	StoredBytes   int64     `json:"stored_bytes,omitempty"`
	RawBytes      int64     `json:"raw_bytes,omitempty"`
	Updated       time.Time `json:"updated"`
}

const runTimeLayout = "20060102T150405.000Z"

// maxRecord bounds what is read of a job record or state: it comes from
// the repository.
const maxRecord = 1 << 20

func jobKey(job, rest string) (string, error) {
	if !ValidJobName(job) {
		return "", fmt.Errorf("invalid job name %q", job)
	}
	return jobsPrefix + job + "/" + rest, nil
}

func putJSON(ctx context.Context, st storage.Store, key string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return st.Put(ctx, key, bytes.NewReader(body))
}

func getJSON(ctx context.Context, st storage.Store, key string, v any) error {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, maxRecord+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(body) > maxRecord {
		return fmt.Errorf("%s is over %d bytes: %w", key, maxRecord, ErrCorruptRecord)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s is unreadable: %w (%w)", key, ErrCorruptRecord, err)
	}
	return nil
}

// ErrCorruptRecord means a job record or state object could be read but
// not understood: a reader treats it as absent and says so, rather than
// stop the job for good.
var ErrCorruptRecord = errors.New("not a drctl job record")

// ReadJobState returns the job's state; a job that never ran has a zero
// state and no error.
func ReadJobState(ctx context.Context, st storage.Store, job string) (JobState, error) {
	key, err := jobKey(job, "state.json")
	if err != nil {
		return JobState{}, err
	}
	var s JobState
	if err := getJSON(ctx, st, key, &s); errors.Is(err, storage.ErrNotExist) {
		return JobState{Job: job}, nil
	} else if err != nil {
		return JobState{}, err
	}
	if s.Job != job {
		return JobState{}, fmt.Errorf("%s names job %q: %w", key, s.Job, ErrCorruptRecord)
	}
	return s, nil
}

// WriteJobState replaces the job's state. Only the lease holder writes it.
func WriteJobState(ctx context.Context, st storage.Store, s JobState) error {
	key, err := jobKey(s.Job, "state.json")
	if err != nil {
		return err
	}
	return putJSON(ctx, st, key, s)
}

// PutJobRun stores the record of a finished run.
func PutJobRun(ctx context.Context, st storage.Store, r JobRun) error {
	if !validRunID(r.RunID) {
		return fmt.Errorf("invalid run id %q", r.RunID)
	}
	key, err := jobKey(r.Job, "runs/"+r.Start.UTC().Format(runTimeLayout)+"-"+r.RunID+".json")
	if err != nil {
		return err
	}
	return putJSON(ctx, st, key, r)
}

// NewRecordID is the id of a new job run, drill or gate record: 16 random
// hex digits.
func NewRecordID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func validRunID(id string) bool {
	if len(id) < 8 || len(id) > 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !lowerAlnum(id[i]) {
			return false
		}
	}
	return true
}

// ListJobRuns returns the job's runs that started in [from, to) (a zero
// bound is open), oldest first. The keys carry the start time, so only the
// records in range are read, eight at a time.
func ListJobRuns(ctx context.Context, st storage.Store, job string, from, to time.Time) ([]JobRun, error) {
	prefix, err := jobKey(job, "runs/")
	if err != nil {
		return nil, err
	}
	runs, err := readTimed[JobRun](ctx, st, prefix, from, to)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		if r.Job != job {
			return nil, fmt.Errorf("a run record under %s names job %q: %w", prefix, r.Job, ErrCorruptRecord)
		}
	}
	sort.SliceStable(runs, func(i, j int) bool { return runs[i].Start.Before(runs[j].Start) })
	return runs, nil
}

// ErrLeaseHeld means another live holder runs the job.
var ErrLeaseHeld = errors.New("job lease held")

// JobLease is a job's exclusive lease, held by one daemon for one run.
//
// Leases are numbered objects jobs/<job>/lease/<n>.json, created with a
// conditional write: a daemon takes the job when the highest-numbered
// lease is released or expired, by creating number n+1 — of two daemons
// racing for it, exactly one create succeeds. The holder renews its own
// object and marks it released at the end. Nothing is ever overwritten by
// anyone but its holder, so no store needs conditional overwrites.
type JobLease struct {
	st     storage.Store
	key    string
	prefix string
	opt    LeaseOptions
	lease  Lease
	stop   chan struct{}
	done   chan struct{}
	lostCh chan struct{} // closed once the lease is lost
	mu     sync.Mutex
	lost   error
	lastOK time.Time
}

// Job lease timing: a crashed daemon's job is taken over within about
// three minutes (TTL, plus a TTL of grace for clock differences).
const (
	JobLeaseInterval = 15 * time.Second
	JobLeaseTTL      = time.Minute
)

const leaseNumberWidth = 10

// AcquireJobLease takes the job's lease for holder (host/pod name and
// pid), or fails with ErrLeaseHeld naming the live holder.
func AcquireJobLease(ctx context.Context, st storage.Store, job, holder string, opt LeaseOptions) (*JobLease, error) {
	prefix, err := jobKey(job, "lease/")
	if err != nil {
		return nil, err
	}
	opt = opt.filled(JobLeaseInterval, JobLeaseTTL)
	top, numbers, err := topLease(ctx, st, prefix)
	if err != nil {
		return nil, err
	}
	if top > 0 {
		key := leaseNumberKey(prefix, top)
		info, err := st.Stat(ctx, key)
		if err != nil && !errors.Is(err, storage.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		if err == nil {
			var l Lease
			if err := getJSON(ctx, st, key, &l); err != nil && !errors.Is(err, storage.ErrNotExist) {
				// Unreadable: a person looks; nobody takes it meanwhile.
				return nil, fmt.Errorf("job %s: %w", job, err)
			} else if err == nil && judgeLease(l, info.ModTime, opt.Now()) == LeaseLive {
				return nil, fmt.Errorf("%w by %s (pid %d) since %s", ErrLeaseHeld, l.Host, l.PID, l.Started.Format(time.RFC3339))
			}
		}
	}
	if top+1 > maxLeaseNumber {
		return nil, fmt.Errorf("job %s: lease numbers exhausted (%s holds %d): delete the job's lease objects", job, prefix, top)
	}
	now := opt.Now().UTC()
	h := &JobLease{st: st, prefix: prefix, key: leaseNumberKey(prefix, top+1), opt: opt, lastOK: now,
		stop: make(chan struct{}), done: make(chan struct{}), lostCh: make(chan struct{}),
		lease: Lease{Name: job, Kind: "job", Host: holder, PID: os.Getpid(), Started: now,
			Renewed: now, Expires: now.Add(opt.TTL), TTLSeconds: opt.TTL.Seconds()}}
	body, _ := json.Marshal(h.lease)
	if err := st.PutIfAbsent(ctx, h.key, bytes.NewReader(body)); errors.Is(err, storage.ErrExists) {
		return nil, fmt.Errorf("%w: another daemon took %s first", ErrLeaseHeld, h.key)
	} else if err != nil {
		return nil, fmt.Errorf("take %s: %w", h.key, err)
	}
	// A contender that listed long ago may have created a number below
	// another's live one: whoever is not the highest now gives way.
	if again, _, err := topLease(ctx, st, prefix); err != nil || again != top+1 {
		h.giveBack(ctx)
		if err != nil {
			return nil, fmt.Errorf("take %s: %w", h.key, err)
		}
		return nil, fmt.Errorf("%w: another daemon took a later lease (%s)", ErrLeaseHeld, leaseNumberKey(prefix, again))
	}
	go h.loop(ctx)
	// Older numbers are history; a couple below ours stay, so that a
	// number is never taken twice.
	for _, n := range numbers {
		if n < top-1 {
			if err := st.Delete(ctx, leaseNumberKey(prefix, n)); err != nil {
				opt.Logger.Debug("could not delete an old job lease", "key", leaseNumberKey(prefix, n), "error", err)
			}
		}
	}
	return h, nil
}

// maxLeaseNumber is the last number leaseNumberWidth digits hold.
const maxLeaseNumber = 9999999999

func leaseNumberKey(prefix string, n int) string {
	return fmt.Sprintf("%s%0*d.json", prefix, leaseNumberWidth, n)
}

// topLease lists the lease numbers of a job.
func topLease(ctx context.Context, st storage.Store, prefix string) (int, []int, error) {
	objs, err := st.List(ctx, prefix)
	if err != nil {
		return 0, nil, err
	}
	top := 0
	var numbers []int
	for _, o := range objs {
		name := strings.TrimSuffix(strings.TrimPrefix(o.Key, prefix), ".json")
		n, err := strconv.Atoi(name)
		if err != nil || n <= 0 || len(name) != leaseNumberWidth {
			continue
		}
		numbers = append(numbers, n)
		top = max(top, n)
	}
	return top, numbers, nil
}

func (h *JobLease) loop(ctx context.Context) {
	defer close(h.done)
	renewEvery(ctx, h.opt.Interval, h.stop, h.renew, func(err error) {
		h.opt.Logger.Warn("could not renew the job's lease", "lease", h.key, "error", err)
	})
}

// renew rewrites the holder's lease, after checking that nobody took a
// higher number (this holder stalled past its expiry).
func (h *JobLease) renew(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(h.opt.Interval, 10*time.Second))
	defer cancel()
	top, _, err := topLease(rctx, h.st, h.prefix)
	if err != nil {
		return err
	}
	if top != 0 && leaseNumberKey(h.prefix, top) != h.key {
		return h.lose(fmt.Errorf("job lease %s was taken over (%s): this run went too long without renewing it", h.key, leaseNumberKey(h.prefix, top)))
	}
	now := h.opt.Now().UTC()
	l := h.lease
	l.Renewed, l.Expires = now, now.Add(h.opt.TTL)
	if err := putJSON(rctx, h.st, h.key, l); err != nil {
		if gap := now.Sub(h.lastOK); gap > h.opt.TTL-h.opt.Interval {
			// Another daemon may judge it expired from now on.
			return h.lose(fmt.Errorf("job lease %s not renewed for %s (%v): another daemon may take the job", h.key, gap.Round(time.Second), err))
		}
		return err
	}
	h.mu.Lock()
	h.lastOK = now
	h.mu.Unlock()
	return nil
}

func (h *JobLease) lose(err error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil {
		h.lost = err
		close(h.lostCh)
	}
	return h.lost
}

// LostCh is closed once the lease is lost: the run must stop.
func (h *JobLease) LostCh() <-chan struct{} { return h.lostCh }

// Lost reports an error once another daemon has taken the job over.
func (h *JobLease) Lost() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost
}

// Key is where the lease lives.
func (h *JobLease) Key() string { return h.key }

// Release stops renewing and marks the lease released, so the next run
// (here or on another daemon) need not wait for it to expire.
func (h *JobLease) Release(ctx context.Context) {
	close(h.stop)
	<-h.done
	if h.Lost() != nil {
		return
	}
	h.giveBack(ctx)
}

func (h *JobLease) giveBack(ctx context.Context) {
	l := h.lease
	l.Released, l.Renewed, l.Expires = true, h.opt.Now().UTC(), h.opt.Now().UTC()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := putJSON(rctx, h.st, h.key, l); err != nil {
		h.opt.Logger.Warn("could not release the job's lease; it expires by itself", "lease", h.key, "error", err)
	}
}

// DeleteJobRunsBefore deletes the job's run records that started before
// cutoff (the records are history; the state keeps the last run).
func DeleteJobRunsBefore(ctx context.Context, st storage.Store, job string, cutoff time.Time) (int, error) {
	prefix, err := jobKey(job, "runs/")
	if err != nil {
		return 0, err
	}
	objs, err := st.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range objs {
		stamp, _, _ := strings.Cut(strings.TrimPrefix(o.Key, prefix), "-")
		if at, err := time.Parse(runTimeLayout, stamp); err == nil && at.Before(cutoff) {
			if err := st.Delete(ctx, o.Key); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
