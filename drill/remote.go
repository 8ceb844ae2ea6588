package drill

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drctl/drctl/engine/pgtools"
)

// Remote is a Provisioner run by a helper program (drctl-kube for the
// kubernetes sandbox), so that drctl itself does not carry its libraries:
// client-go alone would add milliseconds to every wal-push's start.
//
// The helper reads one Request line on stdin, writes Event lines on
// stdout ("progress", then "ready" with where its server is served — a
// private socket directory — or "error"), keeps the sandbox until it reads a "close"
// line or its stdin ends (drctl died: the pipe closes), then destroys it
// and writes "closed". It dies with drctl (parent-death signal), and
// destroys the sandbox on SIGINT and SIGTERM too.
type Remote struct {
	// Program and Args start the helper.
	Program string
	Args    []string
	Env     []string
	// Settings is the helper's own part of the request (secrets
	// included: they travel on the pipe, never in arguments or the
	// environment).
	Settings any
	// User is the sandbox server's superuser; Password is for a server
	// the helper creates (logical drills), generated when empty.
	User, Password string
	KindName       string
	Logger         *slog.Logger
	// CloseTimeout bounds the wait for the helper to destroy the sandbox.
	CloseTimeout time.Duration
	// Cleanup runs once the helper is gone (or was never started).
	Cleanup func()

	mu        sync.Mutex
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	events    chan Event
	done      chan struct{}
	waitErr   error
	addr      string
	failed    error
	watchDone chan struct{} // watch has read the last event
	stderr    *pgtools.TailBuffer
}

// Request is the first line a sandbox helper reads.
type Request struct {
	Spec     Spec   `json:"spec"`
	User     string `json:"user"`
	Password string `json:"password"`
	Settings any    `json:"settings"`
}

// Event is a line a sandbox helper writes.
type Event struct {
	Event   string `json:"event"` // progress, ready, error, closed
	Message string `json:"message,omitempty"`
	// Addr (ready) is where the server is served on this host: a socket
	// directory (libpq's host=/dir), or host:port.
	Addr string `json:"addr,omitempty"`
	// Sandbox names what the helper made (the namespace), for logs.
	Sandbox string `json:"sandbox,omitempty"`
}

func (r *Remote) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// Kind is the sandbox's kind ("kubernetes").
func (r *Remote) Kind() string { return r.KindName }

// Provision starts the helper and waits until its server is reachable.
func (r *Remote) Provision(ctx context.Context, spec Spec) error {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if r.User == "" {
		r.User = "postgres"
	}
	if r.Password == "" {
		r.Password = randomHex(16)
	}
	cmd := exec.Command(r.Program, r.Args...)
	cmd.Env = r.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	r.stderr = pgtools.NewTailBuffer(4096)
	cmd.Stderr = r.stderr
	r.events, r.done, r.watchDone = make(chan Event, 16), make(chan struct{}), make(chan struct{})
	readDone := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// The parent-death signal follows the thread that started the
		// child: this goroutine keeps it until the child is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		<-readDone // os/exec: every read of stdout before Wait
		r.waitErr = cmd.Wait()
		close(r.done)
	}()
	if err := <-started; err != nil {
		r.done = nil
		return fmt.Errorf("start the %s sandbox helper: %w", r.KindName, err)
	}
	r.mu.Lock()
	r.cmd, r.stdin = cmd, stdin
	r.mu.Unlock()
	go func() {
		defer close(readDone)
		defer close(r.events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				log.Debug("sandbox helper", "line", strings.TrimSpace(sc.Text()))
				continue
			}
			r.events <- ev
		}
		io.Copy(io.Discard, stdout)
	}()
	line, err := json.Marshal(Request{Spec: spec, User: r.User, Password: r.Password, Settings: r.Settings})
	if err != nil {
		return err
	}
	if _, err := stdin.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("%s sandbox helper: %w%s", r.KindName, err, r.helperErr())
	}
	last := ""
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				<-r.done
				return fmt.Errorf("%s sandbox helper ended before its server was ready%s", r.KindName, r.helperErr())
			}
			switch ev.Event {
			case "progress":
				last = ev.Message
				log.Info("drill sandbox: "+ev.Message, "sandbox", ev.Sandbox)
			case "ready":
				r.mu.Lock()
				r.addr = ev.Addr
				r.mu.Unlock()
				log.Info("drill sandbox ready", "sandbox", ev.Sandbox)
				go r.watch()
				return nil
			case "error":
				return errors.New(ev.Message)
			}
		case <-ctx.Done():
			if last != "" {
				// What the sandbox was waiting for: the reason, for the record.
				return fmt.Errorf("%w; the sandbox was at: %s", ctx.Err(), last)
			}
			return ctx.Err()
		}
	}
}

// watch keeps the helper's word after the server was ready: a pod that
// died, a forward that broke (Err reports it).
func (r *Remote) watch() {
	defer close(r.watchDone)
	for ev := range r.events {
		switch ev.Event {
		case "error":
			r.mu.Lock()
			if r.failed == nil {
				r.failed = errors.New(ev.Message)
			}
			r.mu.Unlock()
			r.log().Warn("drill sandbox: "+ev.Message, "sandbox", ev.Sandbox)
		case "progress", "closed":
			r.log().Info("drill sandbox: "+first(ev.Message, ev.Event), "sandbox", ev.Sandbox)
		}
	}
}

// Err is why the sandbox stopped serving once ready (nil while it does).
func (r *Remote) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *Remote) helperErr() string {
	if r.stderr == nil {
		return ""
	}
	if s := strings.TrimSpace(r.stderr.String()); s != "" {
		return ": " + oneLine(s)
	}
	return ""
}

// hostPort is where the helper serves the server: a socket directory and
// port (libpq's socket naming), or a TCP host:port.
func (r *Remote) hostPort() (string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.HasPrefix(r.addr, "/") {
		return r.addr, "5432"
	}
	host, port, ok := strings.Cut(r.addr, ":")
	if !ok {
		return "/nonexistent", "5432" // nothing listens: a connection fails plainly
	}
	return host, port
}

// DSN reaches database through the helper's forward.
func (r *Remote) DSN(database string) string {
	return r.DSNAs(r.User, r.Password, database)
}

// DSNAs reaches database through the helper's forward as user.
func (r *Remote) DSNAs(user, password, database string) string {
	host, port := r.hostPort()
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", quoteConn(host), port, quoteConn(user), quoteConn(password), quoteConn(database))
}

// Close has the helper destroy the sandbox, and waits for it.
func (r *Remote) Close(ctx context.Context) error {
	r.mu.Lock()
	cmd, stdin := r.cmd, r.stdin
	r.mu.Unlock()
	if r.Cleanup != nil {
		defer r.Cleanup()
	}
	if cmd == nil {
		return nil
	}
	stdin.Write([]byte(`{"event":"close"}` + "\n"))
	stdin.Close()
	limit := r.CloseTimeout
	if limit <= 0 {
		limit = 5 * time.Minute
	}
	// The events go on being read (by watch once the server was ready, or
	// here): an error now is the removal's.
	r.mu.Lock()
	before := r.failed
	r.mu.Unlock()
	r.mu.Lock()
	if r.addr == "" {
		go r.watch()
	}
	r.mu.Unlock()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-r.done:
	case <-timer.C:
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-r.done
		}
		<-r.watchDone
		return fmt.Errorf("the %s sandbox helper did not finish removing the sandbox within %s%s", r.KindName, limit, r.helperErr())
	}
	<-r.watchDone // the helper's last words (its stdout ended before it exited)
	r.mu.Lock()
	after := r.failed
	r.mu.Unlock()
	if after != nil && after != before {
		return after
	}
	if r.waitErr != nil {
		return fmt.Errorf("%s sandbox helper: %w%s", r.KindName, r.waitErr, r.helperErr())
	}
	return nil
}

// HelperPath finds a helper program: beside the running drctl, then on
// PATH.
func HelperPath(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := exe[:strings.LastIndex(exe, "/")+1] + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found beside drctl or on PATH (make build builds it; the image ships it)", name)
	}
	return p, nil
}
