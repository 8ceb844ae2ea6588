// Package backends opens a repository store from its URL.
package backends

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/filestore"
	"github.com/drctl/drctl/storage/s3store"
)

// Open opens the repository named by rawURL: file:///abs/path, a plain path,
// or s3://bucket/prefix (configured by the AWS environment, see s3store).
func Open(ctx context.Context, rawURL string) (storage.Store, error) {
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
		copt, err := s3store.ClientOptionsFromEnv()
		if err != nil {
			return nil, err
		}
		client, err := s3store.NewClient(ctx, copt)
		if err != nil {
			return nil, err
		}
		opt := s3store.Options{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
		if os.Getenv("DRCTL_S3_CHECKSUMS") == "off" {
			opt.DisableChecksums = true
		}
		return s3store.New(client, opt)
	default:
		return nil, fmt.Errorf("repository URL %q: unsupported scheme %q (want file or s3)", rawURL, u.Scheme)
	}
}
