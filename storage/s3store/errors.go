package s3store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/aws/smithy-go"
)

// cloudError keeps the SDK's error for errors.Is/As but says in one short
// line what went wrong: the service's code and message, or why the server
// could not be reached, without the SDK's chain of internals.
type cloudError struct{ err error }

func cloud(err error) error {
	if err == nil {
		return nil
	}
	var ce *cloudError
	if errors.As(err, &ce) {
		return err
	}
	return &cloudError{err}
}

func (c *cloudError) Unwrap() error { return c.err }

func (c *cloudError) Error() string {
	err := c.err
	if errors.Is(err, context.Canceled) {
		return context.Canceled.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded.Error()
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		msg := ae.ErrorCode()
		if m := ae.ErrorMessage(); m != "" && m != msg {
			msg += ": " + m
		}
		if status := httpStatus(err); status != 0 {
			msg += fmt.Sprintf(" (HTTP %d)", status)
		}
		if hint := hints[ae.ErrorCode()]; hint != "" {
			msg += "; " + hint
		}
		return msg
	}
	if status := httpStatus(err); status != 0 {
		return fmt.Sprintf("HTTP %d from the S3 server", status)
	}
	var ue *url.Error
	var oe *net.OpError
	hasURL, hasOp := errors.As(err, &ue), errors.As(err, &oe)
	if hasURL || hasOp {
		var target, cause string
		switch {
		case hasURL:
			target = " " + redactURL(ue.URL)
		case oe.Addr != nil:
			target = " " + oe.Addr.String()
		}
		if hasOp {
			cause = oe.Op + ": " + oe.Err.Error()
		} else {
			cause = ue.Err.Error()
		}
		return "cannot reach the S3 server" + target + ": " + cause + " (check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)"
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "cannot reach the S3 server: " + ne.Error()
	}
	return innermost(err)
}

var hints = map[string]string{
	"InvalidAccessKeyId":    "check AWS_ACCESS_KEY_ID (or the profile's credentials)",
	"SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (or the profile's credentials)",
	"AccessDenied":          "the credentials lack permission for this bucket or prefix",
	"NoSuchBucket":          "create the bucket, or fix the repository URL",
}

// innermost is the last message of a chain such as "operation error S3:
// ListObjectsV2, get identity: get credentials: ...".
func innermost(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

// redactURL drops the query (presigned parameters) of a request URL.
func redactURL(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i]
	}
	return raw
}
