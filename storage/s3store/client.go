package s3store

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// ClientOptions adjust the client built from the standard AWS configuration.
type ClientOptions struct {
	// ForcePathStyle addresses buckets as https://host/bucket, as most
	// self-hosted servers need.
	ForcePathStyle bool
	// MaxAttempts per request, retried with jittered exponential backoff on
	// 5xx, 429, SlowDown and connection errors (default 10).
	MaxAttempts int
}

// ClientOptionsFromEnv reads DRCTL_S3_FORCE_PATH_STYLE.
func ClientOptionsFromEnv() (ClientOptions, error) {
	var o ClientOptions
	if v := os.Getenv("DRCTL_S3_FORCE_PATH_STYLE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("DRCTL_S3_FORCE_PATH_STYLE=%q: want true or false", v)
		}
		o.ForcePathStyle = b
	}
	return o, nil
}

// NewClient builds an S3 client from the standard AWS SDK configuration
// chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and shared
// config files, AWS_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
// AWS_CA_BUNDLE, AWS_MAX_ATTEMPTS, web identity and instance roles.
func NewClient(ctx context.Context, o ClientOptions) (*s3.Client, error) {
	attempts := o.MaxAttempts
	if n, err := strconv.Atoi(os.Getenv("AWS_MAX_ATTEMPTS")); attempts <= 0 && err == nil && n > 0 {
		attempts = n // the SDK's standard variable
	}
	if attempts <= 0 {
		attempts = 10
	}
	cfg, err := config.LoadDefaultConfig(ctx,
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
	)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // self-hosted servers rarely care; AWS redirects
	}
	return s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = o.ForcePathStyle
		// drctl sends its own CRC32C headers; the SDK's default trailing
		// checksums (aws-chunked bodies) break many S3-compatible servers.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}
