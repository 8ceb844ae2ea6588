// Package s3store is the s3:// repository backend for any S3-compatible
// object store. Streams of unknown length go up as multipart uploads whose
// part size grows with the stream, so memory stays bounded by part size x
// parts in flight while a single object can still reach S3's 5 TiB limit.
package s3store

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"golang.org/x/sync/errgroup"

	"github.com/drctl/drctl/storage"
)

const (
	minPartSize = 5 << 20 // S3's minimum for every part but the last
	// DefaultPartSize is the first parts' size.
	DefaultPartSize = 8 << 20
	// DefaultConcurrency is how many parts upload at once.
	DefaultConcurrency = 4
	// DefaultMaxParts is S3's limit on parts per upload.
	DefaultMaxParts = 10000
	// DefaultGrowEvery doubles the part size every this many parts:
	// 8 MiB parts for the first 8 GiB, 16 MiB for the next 16 GiB, ...
	// so 10,000 parts cover more than S3's 5 TiB object limit.
	DefaultGrowEvery = 1000
	maxPartSize      = 5 << 30
	// DefaultMemoryBudget is the memory one upload's parts may hold:
	// five 8 MiB parts, or two 16 MiB ones.
	DefaultMemoryBudget = 40 << 20
	// MaxMemoryPart is the largest part held in memory; larger parts
	// (objects beyond 23 GiB) are spooled to disk.
	MaxMemoryPart = 16 << 20
)

// Options configure a Store.
type Options struct {
	Bucket string
	Prefix string // key prefix inside the bucket, without leading slash
	// PartSize is the size of the first parts (default DefaultPartSize).
	PartSize int64
	// Concurrency is the number of parts uploaded at once.
	Concurrency int
	// MemoryBudget bounds the bytes of parts held in memory by one upload
	// (default DefaultMemoryBudget). Parts larger than MaxMemoryPart (the
	// part size grows with the object) are spooled to an unlinked file in
	// SpoolDir instead, so memory stays bounded whatever the object's size.
	MemoryBudget int64
	// SpoolDir holds spooled parts (default os.TempDir()).
	SpoolDir string
	// MaxParts and GrowEvery shape the part-size schedule; tests lower them.
	MaxParts  int
	GrowEvery int
	// DisableChecksums stops sending x-amz-checksum-crc32c headers, for
	// servers that reject them.
	DisableChecksums bool
}

// Store is a repository in an S3 bucket.
type Store struct {
	client *s3.Client
	opt    Options

	condOnce sync.Once
	condOK   bool
	condErr  error
}

// New returns a store using client. The client should be configured with
// retries (see NewClient).
func New(client *s3.Client, opt Options) (*Store, error) {
	if opt.Bucket == "" {
		return nil, errors.New("s3 repository: empty bucket name")
	}
	opt.Prefix = strings.Trim(opt.Prefix, "/")
	if opt.PartSize == 0 {
		opt.PartSize = DefaultPartSize
	}
	if opt.PartSize < minPartSize || opt.PartSize > MaxMemoryPart {
		// The first part is always read into memory.
		return nil, fmt.Errorf("s3 repository: part size %d outside %d..%d", opt.PartSize, minPartSize, MaxMemoryPart)
	}
	if opt.Concurrency <= 0 {
		opt.Concurrency = DefaultConcurrency
	}
	if opt.MemoryBudget <= 0 {
		opt.MemoryBudget = DefaultMemoryBudget
	}
	opt.MemoryBudget = max(opt.MemoryBudget, min(opt.PartSize, MaxMemoryPart))
	if opt.SpoolDir == "" {
		opt.SpoolDir = os.TempDir()
	}
	if opt.MaxParts <= 0 || opt.MaxParts > DefaultMaxParts {
		opt.MaxParts = DefaultMaxParts
	}
	if opt.GrowEvery <= 0 {
		opt.GrowEvery = DefaultGrowEvery
	}
	return &Store{client: client, opt: opt}, nil
}

func (s *Store) String() string {
	if s.opt.Prefix == "" {
		return "s3://" + s.opt.Bucket
	}
	return "s3://" + s.opt.Bucket + "/" + s.opt.Prefix
}

func (s *Store) objectKey(key string) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	if s.opt.Prefix == "" {
		return key, nil
	}
	return s.opt.Prefix + "/" + key, nil
}

// partSize returns the size of part n (1-based).
func (s *Store) partSize(n int) int64 {
	size := s.opt.PartSize
	for i := (n - 1) / s.opt.GrowEvery; i > 0 && size < maxPartSize; i-- {
		size *= 2
	}
	return min(size, maxPartSize)
}

// Put uploads r to key.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, false)
}

// PutIfAbsent uploads r to key unless key exists. It uses S3 conditional
// writes (If-None-Match: *) where the server honours them, detected once per
// store; elsewhere it falls back to a check before the write, which a
// concurrent writer can race.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	ok, err := s.conditionalWrites(ctx)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if !ok {
		if _, err := s.Stat(ctx, key); err == nil {
			return fmt.Errorf("put %s: %w", key, storage.ErrExists)
		} else if !errors.Is(err, storage.ErrNotExist) {
			return err
		}
		return s.put(ctx, key, r, false)
	}
	return s.put(ctx, key, r, true)
}

// SupportsConditionalWrites reports whether the server refuses a second
// If-None-Match: * write of a key.
func (s *Store) SupportsConditionalWrites(ctx context.Context) (bool, error) {
	return s.conditionalWrites(ctx)
}

func (s *Store) conditionalWrites(ctx context.Context) (bool, error) {
	s.condOnce.Do(func() {
		probe := fmt.Sprintf(".drctl-probe/cond-%d", time.Now().UnixNano())
		k, _ := s.objectKey(probe)
		defer s.client.DeleteObject(context.WithoutCancel(ctx), &s3.DeleteObjectInput{Bucket: &s.opt.Bucket, Key: &k})
		for i := 0; i < 2; i++ {
			_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
				Bucket: &s.opt.Bucket, Key: &k, Body: bytes.NewReader([]byte("probe")),
				IfNoneMatch: aws.String("*"),
			})
			switch {
			case err == nil && i == 1:
				s.condOK = false // the server ignored the condition
			case err == nil:
				continue
			case isPreconditionFailed(err):
				// On the first write too: a retry of it whose first
				// attempt landed (the answer was lost) was refused.
				s.condOK = true
			case httpStatus(err) == http.StatusNotImplemented || apiCode(err) == "NotImplemented":
				s.condOK = false
			default:
				s.condErr = fmt.Errorf("probe conditional writes: %w", cloud(err))
			}
			return
		}
	})
	return s.condOK, s.condErr
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, ifAbsent bool) error {
	k, err := s.objectKey(key)
	if err != nil {
		return err
	}
	size := s.partSize(1)
	if b, ok := r.(*bytes.Reader); ok && int64(b.Len()) < size {
		// Already in memory (a compressed WAL segment): a buffer one
		// byte longer sees its end, not the 8 MiB a stream needs.
		size = int64(b.Len()) + 1
	}
	first := make([]byte, size)
	n, err := io.ReadFull(r, first)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("put %s: read: %w", key, err)
	}
	if err != nil { // the whole object fits in one request
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		in := &s3.PutObjectInput{
			Bucket: &s.opt.Bucket, Key: &k,
			Body: bytes.NewReader(first[:n]), ContentLength: aws.Int64(int64(n)),
		}
		if !s.opt.DisableChecksums {
			in.ChecksumCRC32C = crc32c(first[:n])
		}
		if ifAbsent {
			in.IfNoneMatch = aws.String("*")
		}
		if _, err := s.client.PutObject(ctx, in); err != nil {
			return s.putError(key, err)
		}
		return nil
	}
	return s.multipart(ctx, key, k, first, r, ifAbsent)
}

func (s *Store) putError(key string, err error) error {
	if isPreconditionFailed(err) || httpStatus(err) == http.StatusConflict {
		return fmt.Errorf("put %s: %w", key, storage.ErrExists)
	}
	return fmt.Errorf("put %s: %w", key, cloud(err))
}

func (s *Store) multipart(ctx context.Context, key, k string, first []byte, r io.Reader, ifAbsent bool) error {
	create := &s3.CreateMultipartUploadInput{Bucket: &s.opt.Bucket, Key: &k}
	if !s.opt.DisableChecksums {
		create.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32c
	}
	up, err := s.client.CreateMultipartUpload(ctx, create)
	if err != nil {
		return fmt.Errorf("put %s: create multipart upload: %w", key, cloud(err))
	}
	completed := false
	defer func() {
		if !completed {
			// Abort even when ctx is cancelled: the parts cost money and
			// the upload must never complete.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.opt.Bucket, Key: &k, UploadId: up.UploadId})
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	parts := newPartSource(s.opt, r)
	defer parts.close()
	var mu sync.Mutex
	var done []types.CompletedPart
	upload := func(num int32, p *part) {
		g.Go(func() error {
			defer parts.release(p)
			in := &s3.UploadPartInput{
				Bucket: &s.opt.Bucket, Key: &k, UploadId: up.UploadId, PartNumber: aws.Int32(num),
				Body: p.body(), ContentLength: aws.Int64(p.n),
			}
			if !s.opt.DisableChecksums {
				in.ChecksumCRC32C = p.crc32c()
			}
			out, err := s.client.UploadPart(gctx, in)
			if err != nil {
				return fmt.Errorf("put %s: upload part %d: %w", key, num, cloud(err))
			}
			mu.Lock()
			done = append(done, types.CompletedPart{PartNumber: aws.Int32(num), ETag: out.ETag, ChecksumCRC32C: out.ChecksumCRC32C})
			mu.Unlock()
			return nil
		})
	}

	readErr := func() error {
		firstPart, err := parts.fromBytes(gctx, first)
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		upload(1, firstPart)
		for num := 2; ; num++ {
			p, err := parts.next(gctx, s.partSize(num))
			if gctx.Err() != nil {
				if p != nil {
					parts.release(p)
				}
				return nil // an upload failed; g.Wait reports it
			}
			if err != nil {
				return fmt.Errorf("put %s: %w", key, err)
			}
			if p == nil {
				return nil // end of stream
			}
			if num > s.opt.MaxParts {
				parts.release(p)
				return fmt.Errorf("put %s: stream exceeds %d parts (%d bytes uploaded)", key, s.opt.MaxParts, s.uploaded(num-1))
			}
			upload(int32(num), p)
			if p.last {
				return nil
			}
		}
	}()
	werr := g.Wait()
	if readErr != nil {
		return readErr
	}
	if werr != nil {
		return werr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	sort.Slice(done, func(i, j int) bool { return *done[i].PartNumber < *done[j].PartNumber })
	complete := &s3.CompleteMultipartUploadInput{
		Bucket: &s.opt.Bucket, Key: &k, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
	}
	if ifAbsent {
		complete.IfNoneMatch = aws.String("*")
	}
	if _, err := s.client.CompleteMultipartUpload(ctx, complete); err != nil {
		return s.putError(key, err)
	}
	completed = true
	return nil
}

func (s *Store) uploaded(parts int) int64 {
	var total int64
	for i := 1; i <= parts; i++ {
		total += s.partSize(i)
	}
	return total
}

// Get streams the object. A connection that breaks mid-way is resumed with
// a ranged request pinned to the object's ETag.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.opt.Bucket, Key: &k})
	if err != nil {
		return nil, s.lookupError("get", key, err)
	}
	return &resumingReader{ctx: ctx, s: s, key: key, k: k, body: out.Body, etag: out.ETag}, nil
}

type resumingReader struct {
	ctx     context.Context
	s       *Store
	key, k  string
	body    io.ReadCloser
	etag    *string
	off     int64
	resumes int
}

const maxResumes = 5

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		n, err := r.body.Read(p)
		r.off += int64(n)
		if err == nil || errors.Is(err, io.EOF) || n > 0 {
			if err != nil && !errors.Is(err, io.EOF) {
				err = nil // report the bytes now, the error on the next read
			}
			return n, err
		}
		if r.ctx.Err() != nil || r.resumes >= maxResumes {
			return 0, fmt.Errorf("get %s at byte %d: %w", r.key, r.off, cloud(err))
		}
		r.resumes++
		r.body.Close()
		out, gerr := r.s.client.GetObject(r.ctx, &s3.GetObjectInput{
			Bucket: &r.s.opt.Bucket, Key: &r.k, IfMatch: r.etag,
			Range: aws.String(fmt.Sprintf("bytes=%d-", r.off)),
		})
		if gerr != nil {
			return 0, fmt.Errorf("get %s: resume at byte %d after %v: %w", r.key, r.off, cloud(err), cloud(gerr))
		}
		r.body = out.Body
	}
}

func (r *resumingReader) Close() error { return r.body.Close() }

// Stat issues a HEAD request.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.opt.Bucket, Key: &k})
	if err != nil {
		return storage.ObjectInfo{}, s.lookupError("stat", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// List pages through ListObjectsV2.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	full := prefix
	if s.opt.Prefix != "" {
		full = s.opt.Prefix + "/" + prefix
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.opt.Bucket, Prefix: &full})
	var out []storage.ObjectInfo
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s in %s: %w", prefix, s, cloud(err))
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if s.opt.Prefix != "" {
				key = strings.TrimPrefix(key, s.opt.Prefix+"/")
			}
			if strings.HasPrefix(key, ".drctl-probe/") {
				continue
			}
			out = append(out, storage.ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// ListDirs returns the names directly under prefix that have objects
// below them (S3's delimiter listing: one entry per "directory", not per
// object), sorted.
func (s *Store) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	full := prefix
	if s.opt.Prefix != "" {
		full = s.opt.Prefix + "/" + prefix
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.opt.Bucket, Prefix: &full, Delimiter: aws.String("/")})
	var out []string
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s in %s: %w", prefix, s, cloud(err))
		}
		for _, cp := range page.CommonPrefixes {
			name := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), full), "/")
			if name != "" && !strings.Contains(name, "/") {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Delete removes the object; S3 reports success for a missing key.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.objectKey(key)
	if err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.opt.Bucket, Key: &k}); err != nil {
		if httpStatus(err) == http.StatusNotFound {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, cloud(err))
	}
	return nil
}

func (s *Store) lookupError(op, key string, err error) error {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) || httpStatus(err) == http.StatusNotFound {
		if apiCode(err) == "NoSuchBucket" {
			return fmt.Errorf("%s %s: bucket %q does not exist: %w", op, key, s.opt.Bucket, cloud(err))
		}
		return fmt.Errorf("%s %s: %w", op, key, storage.ErrNotExist)
	}
	return fmt.Errorf("%s %s: %w", op, key, cloud(err))
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isPreconditionFailed(err error) bool {
	return httpStatus(err) == http.StatusPreconditionFailed || apiCode(err) == "PreconditionFailed"
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) *string {
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum(b, castagnoli))
	return aws.String(base64.StdEncoding.EncodeToString(sum[:]))
}

// RemoveStaleTemp aborts the multipart uploads below the store's prefix
// for which dead reports true: the parts of writers that were killed before
// they could abort. It returns how many it aborted.
func (s *Store) RemoveStaleTemp(ctx context.Context, dead func(key string, since time.Time) bool) (int, error) {
	in := &s3.ListMultipartUploadsInput{Bucket: &s.opt.Bucket}
	if s.opt.Prefix != "" {
		in.Prefix = aws.String(s.opt.Prefix + "/")
	}
	n := 0
	for {
		out, err := s.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return n, fmt.Errorf("list multipart uploads: %w", cloud(err))
		}
		for _, u := range out.Uploads {
			key := aws.ToString(u.Key)
			if s.opt.Prefix != "" {
				key = strings.TrimPrefix(key, s.opt.Prefix+"/")
			}
			if u.Initiated == nil || !dead(key, *u.Initiated) {
				continue
			}
			if _, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.opt.Bucket, Key: u.Key, UploadId: u.UploadId}); err != nil {
				return n, fmt.Errorf("abort stale upload of %s: %w", aws.ToString(u.Key), cloud(err))
			}
			n++
		}
		if !aws.ToBool(out.IsTruncated) {
			return n, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}
