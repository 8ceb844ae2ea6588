package s3store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/s3store"
	"github.com/drctl/drctl/storage/storagetest"
	"github.com/drctl/drctl/testrig"
)

func TestConformance(t *testing.T) {
	srv := testrig.StartS3(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Store {
		n++
		s, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: fmt.Sprintf("suite-%d/repo", n)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storagetest.Options{})
}

// TestExplicitClient opens the store from options alone: drctl's cmd
// reads the environment and the config file, the store takes options.
func TestExplicitClient(t *testing.T) {
	srv := testrig.StartS3(t)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	client, err := s3store.NewClient(t.Context(), srv.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	s, err := s3store.New(client, s3store.Options{Bucket: srv.Bucket, Prefix: "env"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "x", strings.NewReader("explicit")); err != nil {
		t.Fatal(err)
	}
	// versitygw honours If-None-Match: the race-free path is the one tested.
	if ok, err := s.SupportsConditionalWrites(t.Context()); err != nil || !ok {
		t.Fatalf("conditional writes: %v %v", ok, err)
	}
	// The object landed under the prefix, in the bucket the URL names.
	if _, err := srv.Client().HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: strPtr("env/x")}); err != nil {
		t.Fatalf("object not at env/x: %v", err)
	}
	// Wrong credentials: one line that names the problem.
	bad := srv.ClientOptions()
	bad.SecretAccessKey = "wrong"
	client, err = s3store.NewClient(t.Context(), bad)
	if err != nil {
		t.Fatal(err)
	}
	s, _ = s3store.New(client, s3store.Options{Bucket: srv.Bucket})
	_, err = s.List(t.Context(), "backups/")
	if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") || strings.Contains(err.Error(), "operation error") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("wrong secret: %v", err)
	}
	// No credentials anywhere: one line saying how to give them.
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	none := srv.ClientOptions()
	none.AccessKeyID, none.SecretAccessKey = "", ""
	if _, err := s3store.NewClient(t.Context(), none); !errors.Is(err, s3store.ErrNoCredentials) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("no credentials: %v", err)
	}
	// An unreachable endpoint: one line naming it.
	gone := srv.ClientOptions()
	gone.Endpoint, gone.MaxAttempts = "http://127.0.0.1:1", 1
	client, _ = s3store.NewClient(t.Context(), gone)
	s, _ = s3store.New(client, s3store.Options{Bucket: srv.Bucket})
	if _, err := s.List(t.Context(), "backups/"); err == nil || !strings.Contains(err.Error(), "cannot reach the S3 server http://127.0.0.1:1") {
		t.Fatalf("unreachable endpoint: %v", err)
	}
}

func strPtr(s string) *string { return &s }

// TestPartLimit lowers the part limit to show that the growing part size
// carries a stream past parts x first-part-size, and that a stream past
// the limit fails cleanly with nothing left visible or pending.
func TestPartLimit(t *testing.T) {
	srv := testrig.StartS3(t)
	s, err := s3store.New(srv.Client(), s3store.Options{
		Bucket: srv.Bucket, Prefix: "limits", PartSize: 5 << 20, MaxParts: 4, GrowEvery: 2, Concurrency: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Parts of 5, 5, 10, 10 MiB: 30 MiB fit, where fixed 5 MiB parts would hold 20.
	data := make([]byte, 28<<20)
	rand.Read(data)
	if err := s.Put(t.Context(), "fits", bytes.NewReader(data)); err != nil {
		t.Fatalf("28 MiB in 4 growing parts: %v", err)
	}
	rc, err := s.Get(t.Context(), "fits")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), content equal: %v", len(got), err, bytes.Equal(got, data))
	}
	big := make([]byte, 31<<20)
	err = s.Put(t.Context(), "too-big", bytes.NewReader(big))
	if err == nil || !strings.Contains(err.Error(), "exceeds 4 parts") {
		t.Fatalf("31 MiB over a 30 MiB limit: %v", err)
	}
	if _, err := s.Stat(t.Context(), "too-big"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("failed upload visible: %v", err)
	}
	ups, err := srv.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Fatalf("%d multipart uploads left pending, want 0 (aborted)", len(ups.Uploads))
	}
}

// flipTransport corrupts the first byte of every upload body in transit.
type flipTransport struct{ base http.RoundTripper }

func (f flipTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && r.Body != nil && r.ContentLength > 0 {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		data[0] ^= 0xff
		r = r.Clone(r.Context())
		r.Body = io.NopCloser(bytes.NewReader(data))
	}
	return f.base.RoundTrip(r)
}

// TestCorruptionInTransitIsRejected: bytes damaged between drctl and the
// server are refused by the server (checksum or signature), never stored.
func TestCorruptionInTransitIsRejected(t *testing.T) {
	srv := testrig.StartS3(t)
	client := s3.New(srv.Client().Options(), func(o *s3.Options) {
		o.HTTPClient = &http.Client{Transport: flipTransport{http.DefaultTransport}}
		o.RetryMaxAttempts = 1
	})
	s, err := s3store.New(client, s3store.Options{Bucket: srv.Bucket, Prefix: "flip", PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1000, 12 << 20} { // one request, and multipart
		data := make([]byte, size)
		rand.Read(data)
		if err := s.Put(t.Context(), "obj", bytes.NewReader(data)); err == nil {
			t.Fatalf("upload of %d bytes corrupted in transit succeeded", size)
		}
		if _, err := s.Stat(t.Context(), "obj"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("corrupted upload visible: %v", err)
		}
	}
}

func TestRemoveStaleUploads(t *testing.T) {
	srv := testrig.StartS3(t)
	s, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "stale"})
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client()
	for _, key := range []string{"stale/backups/x/dump", "elsewhere/dump"} {
		if _, err := c.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{Bucket: &srv.Bucket, Key: strPtr(key)}); err != nil {
			t.Fatal(err)
		}
	}
	var asked []string
	if n, err := s.RemoveStaleTemp(t.Context(), func(key string, since time.Time) bool {
		asked = append(asked, key)
		if time.Since(since) > time.Hour || since.After(time.Now().Add(time.Minute)) {
			t.Errorf("upload of %s began at %v", key, since)
		}
		return false
	}); err != nil || n != 0 {
		t.Fatalf("uploads of live writers aborted: %d, %v", n, err)
	}
	if len(asked) != 1 || asked[0] != "backups/x/dump" {
		t.Fatalf("asked about %q; want the key below the prefix only", asked)
	}
	if n, err := s.RemoveStaleTemp(t.Context(), func(string, time.Time) bool { return true }); err != nil || n != 1 {
		t.Fatalf("stale uploads below the prefix: aborted %d, %v; want 1", n, err)
	}
	ups, err := c.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &srv.Bucket})
	if err != nil || len(ups.Uploads) != 1 || *ups.Uploads[0].Key != "elsewhere/dump" {
		t.Fatalf("uploads left: %+v, %v; want only the one outside the prefix", ups, err)
	}
}

// TestTLSWithCABundle reaches an HTTPS server whose certificate only
// AWS_CA_BUNDLE vouches for.
func TestTLSWithCABundle(t *testing.T) {
	srv := testrig.StartS3TLS(t)
	opts := srv.ClientOptions()
	opts.MaxAttempts = 1
	client, err := s3store.NewClient(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := s3store.New(client, s3store.Options{Bucket: srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "tls", strings.NewReader("over https")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CA_BUNDLE", "")
	os.Unsetenv("AWS_CA_BUNDLE")
	opts.CABundle = ""
	client, err = s3store.NewClient(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	s, _ = s3store.New(client, s3store.Options{Bucket: srv.Bucket})
	if _, err := s.Stat(t.Context(), "tls"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted certificate was accepted: %v", err)
	}
}

// spoolWatch is a reader that, once it has handed out after bytes, looks
// for a spooled part among this process's open files.
type spoolWatch struct {
	r       io.Reader
	read    int64
	after   int64
	dir     string
	spooled bool
}

func (w *spoolWatch) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	w.read += int64(n)
	if w.read > w.after && !w.spooled {
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(target, w.dir+"/drctl-part-") {
				w.spooled = true
			}
		}
	}
	return n, err
}

// Parts grow with the object; beyond MaxMemoryPart they are spooled to an
// unlinked file, so memory stays bounded, and the object comes back whole.
func TestLargePartsSpoolToDisk(t *testing.T) {
	srv := testrig.StartS3(t)
	spool := t.TempDir()
	// Parts of 5, 10, 20, 40 MiB: the third and fourth are spooled.
	s, err := s3store.New(srv.Client(), s3store.Options{Bucket: srv.Bucket, Prefix: "spool", PartSize: 5 << 20, GrowEvery: 1, SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<20)
	rand.Read(data)
	w := &spoolWatch{r: bytes.NewReader(data), after: 36 << 20, dir: spool}
	if err := s.Put(t.Context(), "big", w); err != nil {
		t.Fatal(err)
	}
	if !w.spooled {
		t.Fatal("no part was spooled to disk while the 20 MiB part was read")
	}
	rc, err := s.Get(t.Context(), "big")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("object read back differs (%d bytes, %v)", len(got), err)
	}
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Fatalf("spool files left: %v", left)
	}
}

// A cancelled request's error prints (it once panicked formatting itself).
func TestCancelledErrorPrints(t *testing.T) {
	srv := testrig.StartS3(t)
	client, err := s3store.NewClient(t.Context(), srv.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	s, _ := s3store.New(client, s3store.Options{Bucket: srv.Bucket})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = s.List(ctx, "backups/")
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("cancelled list: %v", err)
	}
}

// Web identity (IRSA) given as options reaches STS with the role and the
// token file's token: what a config file's env: block sets for
// restore_command, where the process environment has none of it.
func TestWebIdentityFromOptions(t *testing.T) {
	var got url.Values
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		got = r.PostForm
		fmt.Fprint(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>`+
			`<Credentials><AccessKeyId>AKID</AccessKeyId><SecretAccessKey>SECRET</SecretAccessKey><SessionToken>TOKEN</SessionToken>`+
			`<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>`+
			`<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`)
	}))
	defer sts.Close()
	t.Setenv("AWS_ENDPOINT_URL_STS", sts.URL)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_REGION"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("the-pod-token"), 0o600)
	if _, err := s3store.NewClient(t.Context(), s3store.ClientOptions{DisableIMDS: true, MaxAttempts: 1,
		RoleARN: "arn:aws:iam::123456789012:role/drctl", WebIdentityTokenFile: token}); err != nil {
		t.Fatalf("web identity: %v", err)
	}
	if got.Get("Action") != "AssumeRoleWithWebIdentity" || got.Get("RoleArn") != "arn:aws:iam::123456789012:role/drctl" || got.Get("WebIdentityToken") != "the-pod-token" {
		t.Fatalf("STS saw %v", got)
	}
}
