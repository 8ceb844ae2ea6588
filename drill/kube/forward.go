package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	//lint:ignore SA1019 client-go's SPDY dialer (transport/spdy) returns this package's Connection
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Tunnel opens connections to a pod's port.
type Tunnel interface {
	Dial(ctx context.Context) (io.ReadWriteCloser, error)
	Close() error
}

// Forwarder makes a Tunnel to the pod's PostgreSQL port: through the API
// server's port-forward by default; tests give their own (no kubelet
// runs there).
type Forwarder func(ctx context.Context, pod *corev1.Pod, port int) (Tunnel, error)

// PortForward tunnels through the API server (SPDY, as kubectl
// port-forward does), one stream pair per connection.
func PortForward(cfg *rest.Config, log *slog.Logger) Forwarder {
	return func(ctx context.Context, pod *corev1.Pod, port int) (Tunnel, error) {
		transport, upgrader, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			return nil, err
		}
		u, err := url.Parse(cfg.Host)
		if err != nil {
			return nil, err
		}
		u.Path = strings.TrimRight(u.Path, "/") + fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/portforward", pod.Namespace, pod.Name)
		dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
		t := &spdyTunnel{log: log, port: port, dial: func() (httpstream.Connection, error) {
			conn, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
			return conn, err
		}}
		// One connection now: a pod the API server cannot forward to is
		// an error of the drill, not of its first check.
		if _, err := t.connection(); err != nil {
			return nil, err
		}
		return t, nil
	}
}

type spdyTunnel struct {
	log  *slog.Logger
	port int
	dial func() (httpstream.Connection, error)

	mu   sync.Mutex
	conn httpstream.Connection
	next int
}

func (t *spdyTunnel) connection() (httpstream.Connection, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn != nil {
		select {
		case <-t.conn.CloseChan():
			t.conn = nil // dropped (the API server restarted): dial again
		default:
			return t.conn, nil
		}
	}
	conn, err := t.dial()
	if err != nil {
		return nil, err
	}
	t.conn = conn
	return conn, nil
}

func (t *spdyTunnel) Dial(ctx context.Context) (io.ReadWriteCloser, error) {
	conn, err := t.connection()
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	id := t.next
	t.next++
	t.mu.Unlock()
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, strconv.Itoa(t.port))
	h.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(id))
	errStream, err := conn.CreateStream(h)
	if err != nil {
		return nil, err
	}
	errStream.Close() // nothing to send on it
	h.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(h)
	if err != nil {
		conn.RemoveStreams(errStream)
		return nil, err
	}
	go func() {
		// The kubelet says here why it could not connect.
		msg, _ := io.ReadAll(io.LimitReader(errStream, 4096))
		if len(msg) > 0 {
			t.log.Warn("port-forward: the kubelet could not connect to the drill's server", "error", strings.TrimSpace(string(msg)))
			data.Reset()
		}
		conn.RemoveStreams(errStream, data)
	}()
	return data, nil
}

func (t *spdyTunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn != nil {
		return t.conn.Close()
	}
	return nil
}

// serveSocket serves the tunnel on a Unix socket, dir/.s.PGSQL.<port> (as
// libpq names them), in a directory only this user can enter: not a TCP
// port on the runner's loopback, which every process sharing its network
// (a sidecar's neighbours, a bastion's other users) could reach — and a
// restored base backup's server trusts the connections it gets.
func serveSocket(dir string, port int, t Tunnel, log *slog.Logger) (stop func(), err error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 || !ok || int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("socket directory %s: not a directory private to this user", dir)
	}
	path := filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	os.Chmod(path, 0o600)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	open := map[io.Closer]bool{}
	stopped := false
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			local, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer local.Close()
				remote, err := t.Dial(ctx)
				if err != nil {
					log.Warn("port-forward: could not reach the drill's server", "error", err)
					return
				}
				mu.Lock()
				if stopped {
					mu.Unlock()
					remote.Close()
					return
				}
				open[local], open[remote] = true, true
				mu.Unlock()
				done := make(chan struct{}, 2)
				go func() { io.Copy(remote, local); done <- struct{}{} }()
				go func() { io.Copy(local, remote); done <- struct{}{} }()
				<-done
				remote.Close()
				local.Close()
				<-done
				mu.Lock()
				delete(open, local)
				delete(open, remote)
				mu.Unlock()
			}()
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			ln.Close()
			mu.Lock()
			stopped = true
			for c := range open {
				c.Close()
			}
			mu.Unlock()
			t.Close() // ends the streams' copies too
			wg.Wait()
			os.Remove(path)
		})
	}, nil
}

// errNoSocketDir: the request named no private directory for the socket.
var errNoSocketDir = errors.New("kubernetes sandbox: no socket directory")
