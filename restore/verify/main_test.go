package verify_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine of a backup or restore pipeline has an owner that waits
// for it: none may outlive the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of the S3 client's HTTP transport.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
