package testrig

import (
	"testing"

	"go.uber.org/goleak"
)

// MainNoLeaks runs a package's tests and fails them when a goroutine
// outlives them: every goroutine of a backup or restore pipeline has an
// owner that waits for it. Idle keep-alive connections of HTTP transports
// are not leaks.
func MainNoLeaks(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
