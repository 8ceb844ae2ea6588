// Package pgtools finds and runs PostgreSQL's client programs (pg_dump,
// pg_restore) as subprocesses whose exit status and stderr are the truth
// about whether they succeeded.
package pgtools

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Find locates a PostgreSQL program: in binDir when it is set, else on
// PATH, then in `pg_config --bindir`.
func Find(name, binDir string) (string, error) {
	if binDir != "" {
		p := filepath.Join(binDir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s not found in DRCTL_PG_BINDIR=%s", name, binDir)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range ServerBinDirs() {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install the PostgreSQL client programs or set DRCTL_PG_BINDIR", name)
}

// Resolve returns program when it is set, and otherwise finds name.
func Resolve(program, name string) (string, error) {
	if program != "" {
		return program, nil
	}
	return Find(name, "")
}

// ServerBinDirs lists where PostgreSQL's programs may live when they are not
// on PATH: `pg_config --bindir`, then Debian's /usr/lib/postgresql/N/bin,
// newest first.
func ServerBinDirs() []string {
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	return append(dirs, matches...)
}

func versionOf(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// Command is a PostgreSQL program run under a context. Its stderr is kept
// (the last 64 KiB) for the error message.
type Command struct {
	Cmd    *exec.Cmd
	stderr *TailBuffer
	name   string
}

// NewCommand prepares program with args and env. Cancelling ctx kills it.
func NewCommand(ctx context.Context, program string, args, env []string) *Command {
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = env
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	tb := NewTailBuffer(64 << 10)
	cmd.Stderr = tb
	return &Command{Cmd: cmd, stderr: tb, name: filepath.Base(program)}
}

// Wait waits for the program and turns a failure into an error carrying
// its stderr.
func (c *Command) Wait() error {
	if err := c.Cmd.Wait(); err != nil {
		msg := strings.TrimSpace(c.stderr.String())
		if msg != "" {
			return fmt.Errorf("%s failed (%v): %s", c.name, err, msg)
		}
		return fmt.Errorf("%s failed: %w", c.name, err)
	}
	return nil
}

// Stderr returns what the program wrote to stderr so far.
func (c *Command) Stderr() string { return c.stderr.String() }

// Version runs `program --version` and returns its last word ("15.18").
func Version(program string) string {
	out, err := exec.Command(program, "--version").Output()
	if err != nil {
		return ""
	}
	// "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the version
	// is the word after "(PostgreSQL)".
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "(PostgreSQL)" && i+1 < len(f) {
			return f[i+1]
		}
	}
	if len(f) == 0 {
		return ""
	}
	return f[len(f)-1]
}

// TailBuffer keeps the last max bytes written to it (a child's stderr,
// for its error message).
type TailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

// NewTailBuffer keeps the last max bytes.
func NewTailBuffer(max int) *TailBuffer { return &TailBuffer{max: max} }

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if extra := t.buf.Len() - t.max; extra > 0 {
		t.buf.Next(extra)
	}
	return len(p), nil
}

func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
