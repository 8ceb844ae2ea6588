package s3store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/logging"
	"golang.org/x/net/http/httpproxy"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// ClientOptions configure the S3 client. Every field is optional: what is
// not set comes from the AWS SDK's standard chain (the AWS_* environment
// of the process, shared config files, web identity, instance roles). The
// caller (drctl's cmd) fills them from its flags, environment and config
// file, so that a config file's settings win over the inherited ones.
type ClientOptions struct {
	// ForcePathStyle addresses buckets as https://host/bucket, as most
	// self-hosted servers need.
	ForcePathStyle bool
	// MaxAttempts per request, retried with jittered exponential backoff on
	// 5xx, 429, SlowDown and connection errors (default 10).
	MaxAttempts int
	Region      string // default us-east-1 when nothing else names one
	Profile     string // a profile of the shared config files
	Endpoint    string // S3 endpoint URL, for servers other than AWS
	CABundle    string // PEM file of CAs to trust for the endpoint
	// Static credentials; both or neither of the key id and secret.
	AccessKeyID, SecretAccessKey, SessionToken string
	// ConfigFiles and CredentialsFiles replace the shared files' paths.
	ConfigFiles, CredentialsFiles []string
	// Web identity (IRSA on Kubernetes): assume RoleARN with the token in
	// WebIdentityTokenFile.
	RoleARN, WebIdentityTokenFile, RoleSessionName string
	// Proxies for the S3 endpoint, as HTTP_PROXY, HTTPS_PROXY and NO_PROXY
	// mean them; all empty: the process environment's.
	HTTPProxy, HTTPSProxy, NoProxy string
	// DisableIMDS stops the SDK from asking the EC2 instance metadata
	// service for credentials or the region.
	DisableIMDS bool
	// Logger receives the SDK's own log lines (retries, IMDS fallbacks)
	// at debug level; nil silences them.
	Logger *slog.Logger
}

// ErrNoCredentials is returned when the standard chain finds no
// credentials at all.
var ErrNoCredentials = errors.New("no usable AWS credentials (--log-level debug shows why): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile of ~/.aws/config), or run with a web identity (IRSA) or an instance role")

// NewClient builds an S3 client from o and the AWS SDK's standard chain,
// and checks that it has credentials, so that a missing one is reported in
// one line before any request.
func NewClient(ctx context.Context, o ClientOptions) (*s3.Client, error) {
	attempts := o.MaxAttempts
	if attempts <= 0 {
		attempts = 10
	}
	var logger logging.Logger = logging.Nop{}
	if o.Logger != nil {
		logger = logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
			o.Logger.Debug("aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
		})
	}
	opts := []func(*config.LoadOptions) error{
		config.WithLogger(logger),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = attempts
				so.MaxBackoff = 20 * time.Second
				// A backup must outlast a bad minute of the server: no
				// client-side retry budget that gives up early.
				so.RateLimiter = ratelimit.None
				so.Retryables = append(so.Retryables, retry.RetryableHTTPStatusCode{Codes: map[int]struct{}{429: {}}})
			})
		}),
	}
	if o.Region != "" {
		opts = append(opts, config.WithRegion(o.Region))
	}
	if o.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(o.Profile))
	}
	if len(o.ConfigFiles) > 0 {
		opts = append(opts, config.WithSharedConfigFiles(o.ConfigFiles))
	}
	if len(o.CredentialsFiles) > 0 {
		opts = append(opts, config.WithSharedCredentialsFiles(o.CredentialsFiles))
	}
	if (o.AccessKeyID == "") != (o.SecretAccessKey == "") {
		return nil, errors.New("s3 repository: give both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
	}
	if o.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, o.SessionToken)))
	}
	if o.CABundle != "" {
		f, err := os.Open(o.CABundle)
		if err != nil {
			return nil, fmt.Errorf("s3 repository: CA bundle: %w", err)
		}
		defer f.Close()
		opts = append(opts, config.WithCustomCABundle(f))
	}
	if o.DisableIMDS {
		opts = append(opts, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	if o.HTTPProxy != "" || o.HTTPSProxy != "" || o.NoProxy != "" {
		proxy := (&httpproxy.Config{HTTPProxy: o.HTTPProxy, HTTPSProxy: o.HTTPSProxy, NoProxy: o.NoProxy}).ProxyFunc()
		opts = append(opts, config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.Proxy = func(r *http.Request) (*url.URL, error) { return proxy(r.URL) }
		})))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 repository: AWS configuration: %w", cloud(err))
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // self-hosted servers rarely care; AWS redirects
	}
	if o.RoleARN != "" && o.WebIdentityTokenFile != "" && o.AccessKeyID == "" {
		provider := stscreds.NewWebIdentityRoleProvider(sts.NewFromConfig(cfg), o.RoleARN, stscreds.IdentityTokenFile(o.WebIdentityTokenFile),
			func(wo *stscreds.WebIdentityRoleOptions) {
				if o.RoleSessionName != "" {
					wo.RoleSessionName = o.RoleSessionName
				}
			})
		cfg.Credentials = aws.NewCredentialsCache(provider)
	}
	if cfg.Credentials == nil {
		return nil, fmt.Errorf("s3 repository: %w", ErrNoCredentials)
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if o.Logger != nil {
			o.Logger.Debug("credential chain failed", "error", err)
		}
		return nil, fmt.Errorf("s3 repository: %w", ErrNoCredentials)
	}
	return s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = o.ForcePathStyle
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		// drctl sends its own CRC32C headers; the SDK's default trailing
		// checksums (aws-chunked bodies) break many S3-compatible servers.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}
