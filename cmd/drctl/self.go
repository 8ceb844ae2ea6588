package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/drctl/drctl/engine/pgtools"
)

// selfCmd runs drctl itself as a child — the commands users run — for the
// daemon's jobs, the drill's restores and the gate's recovery points.
type selfCmd struct {
	exe  string
	args []string // the global settings, before each command's own
	env  []string
	// waitDelay: after the end of ctx the child gets SIGTERM (it aborts
	// its uploads and releases its leases), and is killed this long after.
	waitDelay time.Duration
}

// childError is a failed child: its own error line ("drctl: ..."), else
// its last line, and the exec error (an *exec.ExitError for the status).
type childError struct {
	msg    string
	stderr string
	err    error
}

func (e *childError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return e.err.Error()
}

func (e *childError) Unwrap() error { return e.err }

// run runs drctl with args and env (added to the command's own) and
// returns its stdout (up to 4 MiB). The child dies with this process.
func (c selfCmd) run(ctx context.Context, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.exe, append(slices.Clone(c.args), args...)...)
	cmd.Env = append(slices.Clone(c.env), env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = c.waitDelay
	cmd.SysProcAttr = childProcAttr()
	var out bytes.Buffer
	errs := pgtools.NewTailBuffer(16 << 10)
	cmd.Stdout, cmd.Stderr = &limitedWriter{w: &out, n: 4 << 20}, errs
	// The parent-death signal follows the thread that started the child:
	// keep this goroutine on it until the child is gone.
	runtime.LockOSThread()
	err := cmd.Run()
	runtime.UnlockOSThread()
	if err != nil {
		return out.Bytes(), &childError{msg: childLine(errs.String()), stderr: errs.String(), err: err}
	}
	return out.Bytes(), nil
}

// childLine is a child's error line ("drctl: ..."), else its last line.
func childLine(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if msg, ok := strings.CutPrefix(lines[i], "drctl: "); ok {
			return oneLine(msg)
		}
	}
	return oneLine(lines[len(lines)-1])
}

// exitCode is a child's exit status (-1 when it did not exit).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Logical restores into the sandbox named by env's PG* variables: its
// password never appears on a command line.
func (c selfCmd) Logical(ctx context.Context, id string, env []string) error {
	_, err := c.run(ctx, env, "restore", id, "--into", "")
	return restoreError(err)
}

// Physical writes the base backup; recovery replays the whole archive.
func (c selfCmd) Physical(ctx context.Context, id, dataDir string) error {
	_, err := c.run(ctx, nil, "restore", id, "--to", dataDir)
	return restoreError(err)
}

func restoreError(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("restore: %w", err)
}

type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return len(p), nil
	}
	k := min(len(p), l.n)
	l.n -= k
	l.w.Write(p[:k])
	return len(p), nil
}
