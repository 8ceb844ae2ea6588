// Command drctl-kube runs drctl's restore drills in scratch Kubernetes
// namespaces. drctl drill --sandbox kubernetes starts it and speaks to it
// on its stdin and stdout (see drill.Remote); it is a program of its own
// so that drctl, run once per WAL segment, does not load client-go.
//
//	drctl-kube sandbox            one drill's namespace (drctl drives it)
//	drctl-kube janitor [--kubeconfig F] [--context C]
//	                              delete drill namespaces past their expiry
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/drill/kube"
)

var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	switch os.Args[1] {
	case "sandbox":
		err = sandbox(os.Stdin, os.Stdout, log)
	case "janitor":
		err = janitor(os.Args[2:], os.Stdout, log)
	case "--version", "version":
		fmt.Println("drctl-kube version " + version)
		return
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "drctl-kube: "+strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: drctl-kube sandbox | drctl-kube janitor [--kubeconfig FILE] [--context NAME]")
	os.Exit(2)
}

// restConfig: the kubeconfig named, else in-cluster, else $KUBECONFIG or
// ~/.kube/config.
func restConfig(kubeconfig, context string) (*rest.Config, error) {
	if kubeconfig == "" && context == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return rest.InClusterConfig()
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

func janitor(args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("janitor", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
	kctx := fs.String("context", "", "kubeconfig context")
	sa := fs.String("service-account", "", "drctl's ServiceAccount (namespace/name): only its drill namespaces are considered (default: only those no ServiceAccount made)")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	cfg, err := restConfig(*kubeconfig, *kctx)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	removed, err := kube.Janitor(ctx, c, drill.Owner(*sa), time.Now(), log)
	if err != nil {
		return fmt.Errorf("janitor: %w", err)
	}
	for _, ns := range removed {
		fmt.Fprintln(stdout, "deleted expired drill namespace "+ns)
	}
	return nil
}

// request is drill.Request with the kubernetes settings.
type request struct {
	Spec     drill.Spec               `json:"spec"`
	User     string                   `json:"user"`
	Password string                   `json:"password"`
	Settings drill.KubernetesSettings `json:"settings"`
}

// sandbox makes one drill's namespace and keeps it until told to close
// (or drctl is gone: stdin ends), SIGINT or SIGTERM; then deletes it.
func sandbox(stdin io.Reader, stdout io.Writer, log *slog.Logger) error {
	var mu sync.Mutex
	emit := func(ev drill.Event) {
		line, _ := json.Marshal(ev)
		mu.Lock()
		stdout.Write(append(line, '\n'))
		mu.Unlock()
	}
	in := bufio.NewReader(stdin)
	first, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read the request: %w", err)
	}
	var req request
	if err := json.Unmarshal(first, &req); err != nil {
		return fmt.Errorf("read the request: %w", err)
	}
	// Close when drctl says so or is gone, or on a signal.
	closing := make(chan struct{})
	var once sync.Once
	closeNow := func() { once.Do(func() { close(closing) }) }
	go func() {
		for {
			if _, err := in.ReadBytes('\n'); err != nil {
				closeNow()
				return
			}
			closeNow()
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigs; closeNow() }()

	cfg, err := restConfig(req.Settings.Kubeconfig, req.Settings.Context)
	if err != nil {
		emit(drill.Event{Event: "error", Message: err.Error()})
		return nil
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		emit(drill.Event{Event: "error", Message: err.Error()})
		return nil
	}
	sb := &kube.Sandbox{Client: c, Settings: req.Settings, User: req.User, Password: req.Password, Logger: log,
		Forward: forwarder(cfg, c, log), SocketDir: req.Settings.SocketDir,
		Progress: func(ns, msg string) { emit(drill.Event{Event: "progress", Message: msg, Sandbox: ns}) }}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-closing; cancel() }()
	if err := sb.Provision(ctx, req.Spec); err != nil {
		if ctx.Err() != nil {
			// drctl stopped it (its timeout, a signal): not an error of ours.
			emit(drill.Event{Event: "progress", Message: "stopped before the sandbox was ready", Sandbox: sb.Namespace()})
		} else {
			emit(drill.Event{Event: "error", Message: err.Error(), Sandbox: sb.Namespace()})
		}
	} else {
		emit(drill.Event{Event: "ready", Addr: sb.Addr(), Sandbox: sb.Namespace()})
		go func() {
			// A pod that dies once ready: drctl stops waiting for it.
			if err := sb.Watch(ctx); err != nil && ctx.Err() == nil {
				emit(drill.Event{Event: "error", Message: err.Error(), Sandbox: sb.Namespace()})
			}
		}()
	}
	<-closing
	cancel() // the watch too, before the pod goes
	if err := sb.Close(context.Background()); err != nil {
		emit(drill.Event{Event: "error", Message: err.Error(), Sandbox: sb.Namespace()})
		return err
	}
	emit(drill.Event{Event: "closed", Sandbox: sb.Namespace()})
	return nil
}

// forwarder is the API server's port-forward. DRCTL_KUBE_TEST_ADDRESS_ANNOTATION
// is for drctl's own tests, where no kubelet runs (kwok's fake nodes): the
// pod's server is played on this host, at the loopback address the test
// writes in that annotation of the pod (any other address is refused).
func forwarder(cfg *rest.Config, c kubernetes.Interface, log *slog.Logger) kube.Forwarder {
	key := os.Getenv("DRCTL_KUBE_TEST_ADDRESS_ANNOTATION")
	if key == "" {
		return kube.PortForward(cfg, log)
	}
	return func(ctx context.Context, pod *corev1.Pod, port int) (kube.Tunnel, error) {
		for {
			p, err := c.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err == nil && p.Annotations[key] != "" {
				addr := p.Annotations[key]
				host, _, err := net.SplitHostPort(addr)
				if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
					return nil, fmt.Errorf("test address %q: not a loopback address", addr)
				}
				return loopbackTunnel(addr), nil
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// loopbackTunnel dials a server on this host (the tests').
type loopbackTunnel string

func (t loopbackTunnel) Dial(ctx context.Context) (io.ReadWriteCloser, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", string(t))
}

func (t loopbackTunnel) Close() error { return nil }
