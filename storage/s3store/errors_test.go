package s3store

import (
	"context"
	"fmt"
	"testing"
)

// A bare cancellation (what a body read returns after SIGINT) once
// panicked when its message was formatted.
func TestCloudErrorOfBareCancellation(t *testing.T) {
	for _, err := range []error{context.Canceled, context.DeadlineExceeded, fmt.Errorf("read: %w", context.Canceled)} {
		if msg := cloud(err).Error(); msg == "" {
			t.Fatalf("%v: empty message", err)
		}
	}
}
