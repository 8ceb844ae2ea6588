// Package catalog is the repository's table of contents: the manifest of
// each backup, where its objects live, and how backups are found. The key
// layout and manifest schema are the contract documented in FORMAT.md.
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
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// FormatVersion is the manifest schema version this code writes. Readers
// refuse manifests with a newer version.
const FormatVersion = 1

// Kinds of backup.
const (
	KindLogical  = "logical"
	KindPhysical = "physical"
)

// Roles of objects within a backup.
const (
	RoleDump     = "dump"            // a pg_dump custom-format archive
	RoleTar      = "tar"             // a tablespace's tar archive from BASE_BACKUP
	RoleManifest = "backup_manifest" // the server's backup_manifest
)

const backupsPrefix = "backups/"

// Manifest describes one complete backup. It is written last: a backup
// without a manifest does not exist.
type Manifest struct {
	FormatVersion int               `json:"format_version"`
	ID            string            `json:"id"`
	Kind          string            `json:"kind"`
	Database      string            `json:"database"`
	StartTime     time.Time         `json:"start_time"`
	EndTime       time.Time         `json:"end_time"`
	Labels        map[string]string `json:"labels,omitempty"`
	Server        Server            `json:"server"`
	Compression   string            `json:"compression"` // "zstd"
	Encryption    Encryption        `json:"encryption"`
	Objects       []Object          `json:"objects"`
	Tool          Tool              `json:"tool"`
	// Physical is set for physical (base) backups.
	Physical *Physical `json:"physical,omitempty"`
}

// Physical describes a base backup: the WAL range it needs to become
// consistent, and the cluster it came from.
type Physical struct {
	StartLSN       string `json:"start_lsn"`
	StopLSN        string `json:"stop_lsn"`
	StartTimeline  uint32 `json:"start_timeline"`
	StopTimeline   uint32 `json:"stop_timeline"`
	StartSegment   string `json:"start_wal_segment"`
	StopSegment    string `json:"stop_wal_segment"`
	WALSegmentSize int64  `json:"wal_segment_size"`
}

// Server records what was backed up.
type Server struct {
	Version          string `json:"version"`                     // server_version, e.g. "15.18"
	VersionNum       int    `json:"version_num"`                 // server_version_num
	SystemIdentifier string `json:"system_identifier,omitempty"` // pg_control_system()
	DatabaseSize     int64  `json:"database_size"`               // pg_database_size at start
}

// Encryption says how objects are encrypted.
type Encryption struct {
	Method     string   `json:"method"`               // "age" or "none"
	Recipients []string `json:"recipients,omitempty"` // public age recipients
}

// Encrypted reports whether the objects are encrypted.
func (e Encryption) Encrypted() bool { return e.Method == "age" }

// Object is one stored object of the backup.
type Object struct {
	Key     string `json:"key"`
	Role    string `json:"role"`
	Size    int64  `json:"size"`     // bytes stored
	SHA256  string `json:"sha256"`   // hex SHA-256 of the bytes stored
	RawSize int64  `json:"raw_size"` // bytes before compression and encryption
	// TOCSHA256, for a dump: the hex SHA-256 of its plaintext header and
	// table of contents, which hold every SQL statement pg_restore runs.
	// A restore checks it before pg_restore starts, so that nothing runs
	// that the (signed) manifest does not vouch for; the data after it is
	// only ever loaded as rows, and checked with the whole object.
	TOCSHA256 string `json:"toc_sha256,omitempty"`
	// For tablespace tars: the tablespace's OID and original location
	// (both empty for the main data directory, base.tar).
	TablespaceOID  string `json:"tablespace_oid,omitempty"`
	TablespacePath string `json:"tablespace_path,omitempty"`
}

// Tool identifies the writer.
type Tool struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	PgDump    string `json:"pg_dump,omitempty"`
	PgDumpArg string `json:"pg_dump_args,omitempty"`
}

// StoredSize is the total of the objects' stored sizes.
func (m *Manifest) StoredSize() int64 {
	var n int64
	for _, o := range m.Objects {
		n += o.Size
	}
	return n
}

// RawSize is the total of the objects' sizes before compression.
func (m *Manifest) RawSize() int64 {
	var n int64
	for _, o := range m.Objects {
		n += o.RawSize
	}
	return n
}

// Object returns the backup's object with the given role.
func (m *Manifest) Object(role string) (Object, bool) {
	for _, o := range m.Objects {
		if o.Role == role {
			return o, true
		}
	}
	return Object{}, false
}

var idPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$`) })

// NewID returns a backup id that sorts by start time: 20261126T141438Z-3fa9c1.
func NewID(start time.Time) string {
	var rnd [3]byte
	rand.Read(rnd[:])
	return start.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(rnd[:])
}

// ValidID reports whether id has the form NewID makes.
func ValidID(id string) bool { return idPattern().MatchString(id) }

// ManifestKey is where backup id's manifest lives.
func ManifestKey(id string) string { return backupsPrefix + id + "/manifest.json" }

// DumpKey is where a logical backup's dump lives.
func DumpKey(id string, encrypted bool) string {
	if encrypted {
		return backupsPrefix + id + "/dump.pgc.zst.age"
	}
	return backupsPrefix + id + "/dump.pgc.zst"
}

// ObjectKey is where an object of backup id named name lives.
func ObjectKey(id, name string) string { return backupsPrefix + id + "/" + name }

// ErrUnknownBackup is returned when no complete backup has the id.
var ErrUnknownBackup = errors.New("no such backup")

// Signer signs what a writer commits (sshsig.Signer).
type Signer interface {
	Sign(message []byte) ([]byte, error)
}

// Verifier checks a signature against the allowed signers and returns the
// signer's principals (sshsig.AllowedSigners).
type Verifier interface {
	Verify(message, signature []byte) (string, error)
}

// ErrUnsigned marks a manifest or WAL file without a signature, refused
// when allowed signers are configured.
var ErrUnsigned = errors.New("not signed")

// ErrBadSignature marks a signature that does not verify, or whose key is
// not an allowed signer. Verifiers wrap it.
var ErrBadSignature = errors.New("bad signature")

// SignatureKey is where the signature of backup id's manifest lives.
func SignatureKey(id string) string { return ManifestKey(id) + ".sig" }

// Commit stores the manifest, making the backup visible. It refuses to
// replace an existing manifest, and to commit a backup any of whose objects
// is missing or of another size than the manifest says. With a signer, the
// manifest's signature is stored first, then the manifest.
func Commit(ctx context.Context, st storage.Store, m *Manifest, signer Signer) error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("commit backup %s: %w", m.ID, err)
	}
	for _, o := range m.Objects {
		info, err := st.Stat(ctx, o.Key)
		if err != nil {
			return fmt.Errorf("commit backup %s: check %s: %w", m.ID, o.Key, err)
		}
		if info.Size != o.Size {
			return fmt.Errorf("commit backup %s: %s holds %d bytes, %d were written", m.ID, o.Key, info.Size, o.Size)
		}
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	body = append(body, '\n')
	if signer != nil {
		sig, err := signer.Sign(body)
		if err != nil {
			return fmt.Errorf("commit backup %s: %w", m.ID, err)
		}
		if err := st.Put(ctx, SignatureKey(m.ID), bytes.NewReader(sig)); err != nil {
			return fmt.Errorf("commit backup %s: signature: %w", m.ID, err)
		}
	}
	// The commit point is not cancelled half-way: a cancelled request may
	// still be carried out by the server, and the caller would then delete
	// the data of a listed backup.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	err = st.PutIfAbsent(cctx, ManifestKey(m.ID), bytes.NewReader(body))
	if err == nil {
		return nil
	}
	// A retried create whose first attempt was carried out but whose
	// answer was lost finds the manifest there: ours, byte for byte, is a
	// success (reporting failure would delete a listed backup's data).
	// Anything else under the name is a real conflict.
	switch same, cerr := sameObjectErr(cctx, st, ManifestKey(m.ID), body); {
	case same:
		return nil
	case errors.Is(err, storage.ErrExists):
		return fmt.Errorf("commit backup %s: %w", m.ID, err)
	case cerr != nil && !errors.Is(cerr, storage.ErrNotExist):
		return fmt.Errorf("commit backup %s: %w (%w: %v)", m.ID, err, ErrCommitUncertain, cerr)
	}
	return fmt.Errorf("commit backup %s: %w", m.ID, err)
}

// commitTimeout bounds the manifest's conditional create.
const commitTimeout = 2 * time.Minute

// ErrCommitUncertain means the manifest's create failed in a way that may
// have stored it anyway, and reading it back failed too: the backup's
// objects must be kept (a later listing shows whether it is there).
var ErrCommitUncertain = errors.New("the manifest may have been stored")

func sameObjectErr(ctx context.Context, st storage.Store, key string, want []byte) (bool, error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	got, err := io.ReadAll(io.LimitReader(rc, int64(len(want))+1))
	return err == nil && bytes.Equal(got, want), err
}

func (m *Manifest) validate() error {
	if !ValidID(m.ID) {
		return fmt.Errorf("invalid backup id %q", m.ID)
	}
	if m.FormatVersion < 1 || m.FormatVersion > FormatVersion {
		return fmt.Errorf("manifest format_version %d is not supported by this drctl (it reads 1..%d); upgrade drctl", m.FormatVersion, FormatVersion)
	}
	if len(m.Objects) == 0 {
		return errors.New("manifest lists no objects")
	}
	for _, o := range m.Objects {
		if !strings.HasPrefix(o.Key, backupsPrefix+m.ID+"/") || storage.ValidKey(o.Key) != nil || strings.Count(o.Key, "/") != 2 {
			return fmt.Errorf("manifest object %q is outside the backup", o.Key)
		}
		if len(o.SHA256) != 64 || strings.Trim(o.SHA256, "0123456789abcdef") != "" {
			return fmt.Errorf("manifest object %q has no SHA-256", o.Key)
		}
		if o.Size < 0 || o.RawSize < 0 {
			return fmt.Errorf("manifest object %q has a negative size", o.Key)
		}
		if o.TOCSHA256 != "" && (len(o.TOCSHA256) != 64 || strings.Trim(o.TOCSHA256, "0123456789abcdef") != "") {
			return fmt.Errorf("manifest object %q has a malformed toc_sha256", o.Key)
		}
		switch o.Role {
		case RoleDump, RoleTar, RoleManifest:
		default:
			return fmt.Errorf("manifest object %q has an unknown role %q", o.Key, o.Role)
		}
		if o.TablespaceOID != "" && strings.Trim(o.TablespaceOID, "0123456789") != "" {
			return fmt.Errorf("manifest object %q: tablespace OID %q is not a number", o.Key, o.TablespaceOID)
		}
	}
	switch m.Kind {
	case KindLogical:
	case KindPhysical:
		if m.Physical == nil {
			return errors.New("physical backup without its physical section")
		}
	default:
		return fmt.Errorf("unknown backup kind %q", m.Kind)
	}
	switch m.Encryption.Method {
	case "age", "none":
	default:
		return fmt.Errorf("unknown encryption method %q", m.Encryption.Method)
	}
	return nil
}

// Load reads and checks backup id's manifest. With a verifier, the
// manifest must carry a signature by an allowed signer, checked over the
// very bytes parsed.
func Load(ctx context.Context, st storage.Store, id string, v Verifier) (*Manifest, error) {
	m, _, err := LoadVerified(ctx, st, id, v)
	return m, err
}

// LoadVerified is Load that also returns, with a verifier, the principals
// of the allowed signer who signed the manifest.
func LoadVerified(ctx context.Context, st storage.Store, id string, v Verifier) (*Manifest, string, error) {
	body, err := readManifest(ctx, st, id)
	if err != nil {
		return nil, "", err
	}
	who := ""
	if v != nil {
		if who, err = VerifySignature(ctx, st, SignatureKey(id), body, v); err != nil {
			return nil, "", fmt.Errorf("manifest of backup %s: %w", id, err)
		}
	}
	m, err := parseManifest(id, body)
	return m, who, err
}

// readManifest returns the stored bytes of backup id's manifest, bounded.
func readManifest(ctx context.Context, st storage.Store, id string) ([]byte, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("backup %q: %w (ids look like 20261126T141438Z-3fa9c1)", id, ErrUnknownBackup)
	}
	rc, err := st.Get(ctx, ManifestKey(id))
	if err != nil {
		if errors.Is(err, storage.ErrNotExist) {
			return nil, fmt.Errorf("backup %s: %w", id, ErrUnknownBackup)
		}
		return nil, fmt.Errorf("read manifest of %s: %w", id, err)
	}
	body, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w", id, err)
	}
	if len(body) > maxManifest {
		return nil, fmt.Errorf("manifest of %s is over %d bytes: refusing", id, maxManifest)
	}
	return body, nil
}

// parseManifest checks the bytes of backup id's manifest.
func parseManifest(id string, body []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("manifest of %s is corrupt: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("manifest %s names backup %q", ManifestKey(id), m.ID)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", id, err)
	}
	return &m, nil
}

// maxManifest bounds what is read of a manifest: it comes from the
// repository, which anyone with write access can fill.
const maxManifest = 16 << 20

// VerifySignature checks the signature stored under sigKey over message
// (a manifest's bytes, a WAL file's signed text) and returns the signer's
// principals. A missing signature is ErrUnsigned, a refused one
// ErrBadSignature; anything else is an error reading it.
func VerifySignature(ctx context.Context, st storage.Store, sigKey string, message []byte, v Verifier) (string, error) {
	rc, err := st.Get(ctx, sigKey)
	if errors.Is(err, storage.ErrNotExist) {
		return "", fmt.Errorf("%w (no %s), and allowed signers are configured: refusing", ErrUnsigned, sigKey)
	}
	if err != nil {
		return "", fmt.Errorf("read signature: %w", err)
	}
	sig, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	rc.Close()
	if err != nil {
		return "", fmt.Errorf("read signature: %w", err)
	}
	who, err := v.Verify(message, sig)
	if err != nil {
		if !errors.Is(err, ErrBadSignature) {
			err = fmt.Errorf("%w: %v", ErrBadSignature, err)
		}
		return "", fmt.Errorf("signature %s: %w", sigKey, err)
	}
	return who, nil
}

// SignExisting signs backup id's manifest as it is stored, when it has no
// signature yet: for repositories written before signing was set up, once
// the operator has verified them. It reports whether it signed.
func SignExisting(ctx context.Context, st storage.Store, id string, signer Signer) (bool, error) {
	if state, err := SignatureState(ctx, st, id); err != nil || state != Unsigned {
		return false, err
	}
	body, err := readManifest(ctx, st, id)
	if err != nil {
		return false, err
	}
	if _, err := parseManifest(id, body); err != nil { // the bytes signed are the bytes checked
		return false, err
	}
	sig, err := signer.Sign(body)
	if err != nil {
		return false, err
	}
	return true, st.PutIfAbsent(ctx, SignatureKey(id), bytes.NewReader(sig))
}

// What SignatureState says when no allowed signers check the signature.
const (
	Unsigned        = "unsigned"
	SignedUnchecked = "signed (not checked: no allowed signers configured)"
)

// SignatureState says, for messages, whether backup id's manifest has a
// signature, without checking it (LoadVerified checks).
func SignatureState(ctx context.Context, st storage.Store, id string) (string, error) {
	_, err := st.Stat(ctx, SignatureKey(id))
	switch {
	case err == nil:
		return SignedUnchecked, nil
	case errors.Is(err, storage.ErrNotExist):
		return Unsigned, nil
	default:
		return "", err
	}
}

// List returns every committed backup, oldest first. Objects of backups
// that never committed are ignored. A manifest that cannot be read (or,
// with a verifier, is not signed by an allowed signer) is an error: a
// broken catalog must not look like a smaller one.
func List(ctx context.Context, st storage.Store, v Verifier) ([]*Manifest, error) {
	all, _, err := listManifests(ctx, st, v)
	return all, err
}

// ListVerified is List that also says which backups have a verification
// record (LastVerification tells its outcome), from the same listing.
func ListVerified(ctx context.Context, st storage.Store, v Verifier) ([]*Manifest, map[string]bool, error) {
	return listManifests(ctx, st, v)
}

// Query selects backups. Zero fields select everything.
type Query struct {
	Kind     string // KindLogical or KindPhysical
	Database string // the database a logical backup dumped
	// Accept, when set, must also hold (e.g. a base backup ends before the
	// recovery target).
	Accept func(*Manifest) bool
	// What the query is for, in the error when nothing matches
	// ("before the recovery target").
	Purpose string
	// Verifier, when set, refuses manifests not signed by an allowed signer.
	Verifier Verifier
}

// Match reports whether m is selected.
func (q Query) Match(m *Manifest) bool {
	return (q.Kind == "" || m.Kind == q.Kind) && (q.Database == "" || m.Database == q.Database) &&
		(q.Accept == nil || q.Accept(m))
}

// Select returns the backups of all that q selects, in their order.
func Select(all []*Manifest, q Query) []*Manifest {
	var out []*Manifest
	for _, m := range all {
		if q.Match(m) {
			out = append(out, m)
		}
	}
	return out
}

// ErrAmbiguous is returned by Resolve when "latest" could mean backups of
// several databases.
var ErrAmbiguous = errors.New("ambiguous")

// Resolve finds a backup by id, or for "latest" the newest complete one
// that q selects. A logical "latest" without a database is refused when
// the repository holds logical backups of several databases: a restore of
// the wrong database is worse than a question. An id of another kind than
// q.Kind is refused, naming the right use.
func Resolve(ctx context.Context, st storage.Store, ref string, q Query) (*Manifest, error) {
	if ref != "latest" {
		m, err := Load(ctx, st, ref, q.Verifier)
		if err != nil {
			return nil, err
		}
		if q.Kind != "" && m.Kind != q.Kind {
			use := map[string]string{KindLogical: "restore it into a database with --into DSN", KindPhysical: "restore it into a data directory with --to DIR"}[m.Kind]
			return nil, fmt.Errorf("backup %s is a %s backup, not a %s one: %s", ref, m.Kind, q.Kind, use)
		}
		return m, nil
	}
	// The index's view, with what it lacks read from the objects; the one
	// chosen is read again from its own object below.
	all, fromIndex, err := latestCandidates(ctx, st, q.Verifier)
	if err != nil {
		return nil, err
	}
	if !fromIndex {
		if all, err = List(ctx, st, q.Verifier); err != nil {
			return nil, err
		}
	}
	if q.Kind == KindLogical && q.Database == "" {
		dbs := map[string]bool{}
		for _, m := range Select(all, Query{Kind: KindLogical}) {
			dbs[m.Database] = true
		}
		if len(dbs) > 1 {
			names := make([]string, 0, len(dbs))
			for db := range dbs {
				names = append(names, db)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("latest: %w: %s holds logical backups of %d databases (%s): give --database NAME",
				ErrAmbiguous, st, len(names), strings.Join(names, ", "))
		}
	}
	matched := Select(all, q)
	for fromIndex && len(matched) > 0 {
		newest := matched[len(matched)-1]
		m, err := Load(ctx, st, newest.ID, q.Verifier)
		if errors.Is(err, ErrUnknownBackup) {
			matched = matched[:len(matched)-1] // deleted since the index was written
			continue
		}
		if err != nil {
			return nil, err
		}
		if q.Match(m) {
			return m, nil
		}
		matched = matched[:len(matched)-1] // the index's copy disagreed: it loses
	}
	if len(matched) == 0 {
		what := "complete"
		if q.Kind != "" {
			what += " " + q.Kind
		}
		what += " backup"
		if q.Database != "" {
			what += " of database " + q.Database
		}
		if q.Purpose != "" {
			what += " " + q.Purpose
		}
		return nil, fmt.Errorf("latest: %w: the repository %s holds no %s", ErrUnknownBackup, st, what)
	}
	return matched[len(matched)-1], nil
}

// Verification is the record a successful verify leaves beside a backup.
type Verification struct {
	Time time.Time `json:"time"`
	OK   bool      `json:"ok"`
}

func verificationKey(id string) string { return backupsPrefix + id + "/verified.json" }

// RecordVerification stores the outcome of verifying backup id.
func RecordVerification(ctx context.Context, st storage.Store, id string, v Verification) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return st.Put(ctx, verificationKey(id), bytes.NewReader(body))
}

// LastVerification returns the recorded verification of backup id.
func LastVerification(ctx context.Context, st storage.Store, id string) (*Verification, error) {
	rc, err := st.Get(ctx, verificationKey(id))
	if errors.Is(err, storage.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var v Verification
	if err := json.NewDecoder(rc).Decode(&v); err != nil {
		return nil, nil // an unreadable record counts as none
	}
	return &v, nil
}

// Delete removes backup id: the manifest first, so that an interrupted
// delete never leaves a backup that looks whole, then its other objects.
func Delete(ctx context.Context, st storage.Store, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("invalid backup id %q", id)
	}
	if err := st.Delete(ctx, ManifestKey(id)); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	return deleteObjects(ctx, st, id)
}

func deleteObjects(ctx context.Context, st storage.Store, id string) error {
	objs, err := st.List(ctx, backupsPrefix+id+"/")
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := st.Delete(ctx, o.Key); err != nil {
			return fmt.Errorf("delete backup %s: %w", id, err)
		}
	}
	return nil
}

// Orphans returns the ids of backups that have objects but no manifest
// and whose writer is provably dead (its lease expired; see Reaper): the
// leftovers of failed backups or interrupted deletes. Those whose writer
// may be alive, or whose lease could not be read, are returned as kept.
func Orphans(ctx context.Context, st storage.Store, r *Reaper) (orphans, kept []string, err error) {
	objs, err := st.List(ctx, backupsPrefix)
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	committed := map[string]bool{}
	for _, o := range objs {
		id, file, ok := strings.Cut(strings.TrimPrefix(o.Key, backupsPrefix), "/")
		if !ok || !ValidID(id) {
			continue
		}
		seen[id] = true
		if file == "manifest.json" {
			committed[id] = true
		}
	}
	for id := range seen {
		if committed[id] {
			continue
		}
		if r.BackupDead(ctx, id) {
			orphans = append(orphans, id)
		} else {
			kept = append(kept, id)
		}
	}
	sort.Strings(orphans)
	sort.Strings(kept)
	return orphans, kept, nil
}

// DeleteOrphan removes the objects of a backup that has no manifest, and
// then its expired lease. It checks both again first, freshly: only a
// definite "no manifest" and a dead writer let it delete anything.
func DeleteOrphan(ctx context.Context, st storage.Store, id string, now time.Time) error {
	if !ValidID(id) {
		return fmt.Errorf("invalid backup id %q", id)
	}
	_, err := st.Stat(ctx, ManifestKey(id))
	switch {
	case err == nil:
		return fmt.Errorf("backup %s has a manifest: not an orphan", id)
	case !errors.Is(err, storage.ErrNotExist):
		return fmt.Errorf("leftovers of %s kept: cannot tell whether it has a manifest: %w", id, err)
	}
	r := NewReaper(st, now)
	if !r.BackupDead(ctx, id) {
		if len(r.Errors) > 0 {
			return fmt.Errorf("leftovers of %s kept: %w", id, r.Errors[0])
		}
		return fmt.Errorf("leftovers of %s kept: its writer's lease is live", id)
	}
	if err := deleteObjects(ctx, st, id); err != nil {
		return err
	}
	if err := st.Delete(ctx, LeaseKey(id)); err != nil {
		return fmt.Errorf("delete lease of %s: %w", id, err)
	}
	return nil
}
