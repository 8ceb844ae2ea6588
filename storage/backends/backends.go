// Package backends opens a repository store from its URL.
package backends

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/storage/s3store"
)

// Options configure the backends; the caller reads them from its flags,
// environment and configuration file.
type Options struct {
	S3Client s3store.ClientOptions
	// DisableChecksums stops sending x-amz-checksum-crc32c headers.
	DisableChecksums bool
	// SpoolDir holds large upload parts (default os.TempDir()).
	SpoolDir string
}

// Open opens the repository named by rawURL: file:///abs/path, a plain path,
// or s3://bucket/prefix.
func Open(ctx context.Context, rawURL string, o Options) (storage.Store, error) {
	if rawURL == "" {
		return nil, fmt.Errorf("no repository: give --repo or DRCTL_REPO (file:///path or s3://bucket/prefix)")
	}
	if !strings.Contains(rawURL, "://") {
		return filestore.Open(rawURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("repository URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("repository URL %q: file URLs take an absolute path (file:///path)", rawURL)
		}
		return filestore.Open(u.Path)
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("repository URL %q: missing bucket (s3://bucket/prefix)", rawURL)
		}
		client, err := s3store.NewClient(ctx, o.S3Client)
		if err != nil {
			return nil, err
		}
		return s3store.New(client, s3store.Options{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"),
			DisableChecksums: o.DisableChecksums, SpoolDir: o.SpoolDir})
	default:
		return nil, fmt.Errorf("repository URL %q: unsupported scheme %q (want file or s3)", rawURL, u.Scheme)
	}
}
