package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/drctl/drctl/drill"
)

// Sandbox is one drill's namespace, as drctl-kube makes, serves and
// deletes it; drctl drives it, and reaches its server, through drill.Remote.
type Sandbox struct {
	Client   kubernetes.Interface
	Settings drill.KubernetesSettings
	User     string
	Password string
	Forward  Forwarder
	// SocketDir is where the server is served, on a Unix socket: a
	// directory private to this user (drctl makes it).
	SocketDir string
	Logger    *slog.Logger
	// Progress, when set, hears each step (drctl-kube reports them).
	Progress func(namespace, message string)
	// Now is the clock of expiries (time.Now when nil).
	Now func() time.Time

	mu        sync.Mutex
	namespace string
	addr      string
	stop      func()
}

// Namespace is the drill's namespace, once made.
func (s *Sandbox) Namespace() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.namespace
}

func (s *Sandbox) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Sandbox) progress(msg string) {
	s.log().Info(msg, "namespace", s.Namespace())
	if s.Progress != nil {
		s.Progress(s.Namespace(), msg)
	}
}

func (s *Sandbox) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Provision creates the namespace and what is in it, waits for the
// restore and the server, and forwards its port.
func (s *Sandbox) Provision(ctx context.Context, spec drill.Spec) error {
	if s.User == "" {
		s.User = "postgres"
	}
	p, err := buildPlan(s.Settings, spec, s.User, s.Password)
	if err != nil {
		return err
	}
	if removed, err := Janitor(ctx, s.Client, drill.Owner(s.Settings.ServiceAccount), s.now(), s.log()); err != nil {
		s.log().Warn("janitor: could not list drill namespaces", "error", err)
	} else if len(removed) > 0 {
		s.progress(fmt.Sprintf("janitor: deleting expired drill namespaces %s", strings.Join(removed, ", ")))
	}
	c := s.Client
	if _, err := c.CoreV1().Namespaces().Create(ctx, p.ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", p.ns.Name, err)
	}
	s.mu.Lock()
	s.namespace = p.ns.Name
	s.mu.Unlock()
	s.progress("namespace created")
	ns := p.ns.Name
	if p.roleBinding != nil {
		if _, err := c.RbacV1().RoleBindings(ns).Create(ctx, p.roleBinding, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create rolebinding in %s: %w", ns, err)
		}
	}
	// A fresh RoleBinding takes a moment to reach the authorizer.
	create := func(what string, f func() error) error {
		for i := 0; ; i++ {
			err := f()
			if err == nil || !apierrors.IsForbidden(err) || p.roleBinding == nil || i >= 50 {
				if err != nil {
					return fmt.Errorf("create %s in %s: %w", what, ns, err)
				}
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	steps := []struct {
		what string
		f    func() error
	}{
		{"resourcequota", func() error {
			_, err := c.CoreV1().ResourceQuotas(ns).Create(ctx, p.quota, metav1.CreateOptions{})
			return err
		}},
		{"limitrange", func() error {
			_, err := c.CoreV1().LimitRanges(ns).Create(ctx, p.limits, metav1.CreateOptions{})
			return err
		}},
		{"networkpolicy", func() error {
			_, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, p.fence, metav1.CreateOptions{})
			return err
		}},
		{"secret", func() error {
			_, err := c.CoreV1().Secrets(ns).Create(ctx, p.secret, metav1.CreateOptions{})
			return err
		}},
		{"pod", func() error { _, err := c.CoreV1().Pods(ns).Create(ctx, p.pod, metav1.CreateOptions{}); return err }},
	}
	for _, st := range steps {
		if err := create(st.what, st.f); err != nil {
			return err
		}
	}
	s.progress("fenced, restoring")
	pod, err := s.waitPod(ctx, ns, p.job != nil)
	if err != nil {
		return err
	}
	if p.job != nil {
		s.progress("server running; the restore job starts")
		job := p.job(pod.Status.PodIP)
		if _, err := c.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create job in %s: %w", ns, err)
		}
		if err := s.waitJob(ctx, ns); err != nil {
			return err
		}
	}
	fwd := s.Forward
	if fwd == nil {
		return errors.New("kubernetes sandbox: no port-forward")
	}
	if s.SocketDir == "" {
		return errNoSocketDir
	}
	s.progress("opening the port-forward to the server")
	tunnel, err := fwd(ctx, pod, pgPort)
	if err != nil {
		return fmt.Errorf("port-forward to %s/%s: %w", ns, pod.Name, err)
	}
	stop, err := serveSocket(s.SocketDir, pgPort, tunnel, s.log())
	if err != nil {
		tunnel.Close()
		return err
	}
	s.mu.Lock()
	s.addr, s.stop = s.SocketDir, stop
	s.mu.Unlock()
	s.progress("server reachable")
	return nil
}

// Watch follows the server's pod once ready, until ctx ends: it returns
// why the pod stopped serving (it failed, was evicted, was deleted).
func (s *Sandbox) Watch(ctx context.Context) error {
	ns := s.Namespace()
	gone := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
		pod, err := s.Client.CoreV1().Pods(ns).Get(ctx, serverPod, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			if gone++; gone >= 2 {
				return fmt.Errorf("pod %s/%s was deleted", ns, serverPod)
			}
		case err == nil:
			gone = 0
			if why := podFailed(pod); why != "" {
				return fmt.Errorf("pod %s/%s: %s%s", ns, serverPod, why, s.initLog(ctx, ns, pod))
			}
		}
	}
}

// Addr is the directory of the forwarded server's socket.
func (s *Sandbox) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// waitPod waits for the server's pod: running (its init container, the
// restore or initdb, done), and ready too when ready says so (a replaying
// server refuses connections until promoted, the drill follows that).
func (s *Sandbox) waitPod(ctx context.Context, ns string, ready bool) (*corev1.Pod, error) {
	var last *corev1.Pod
	said := ""
	for {
		pod, err := s.Client.CoreV1().Pods(ns).Get(ctx, serverPod, metav1.GetOptions{})
		if err == nil {
			last = pod
			// Say what it waits for: drctl puts the last in the record
			// when the drill's timeout comes first.
			if st := "pod " + podState(pod) + s.warnings(ctx, ns); st != said {
				said = st
				s.progress(st)
			}
			if why := podFailed(pod); why != "" {
				return nil, fmt.Errorf("pod %s/%s: %s%s", ns, serverPod, why, s.initLog(ctx, ns, pod))
			}
			if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" && (!ready || podReady(pod)) {
				return pod, nil
			}
		} else if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			s.log().Debug("get pod", "error", err)
		}
		select {
		case <-ctx.Done():
			state := "not created"
			if last != nil {
				state = podState(last)
			}
			return nil, fmt.Errorf("pod %s/%s not running (%s): %w", ns, serverPod, state, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podFailed says why the pod will never serve, or "".
func podFailed(pod *corev1.Pod) string {
	if pod.Status.Phase == corev1.PodFailed && pod.Status.Reason != "" {
		// Evicted, DeadlineExceeded: the pod's reason says more than its
		// containers' exit codes.
		return "pod failed: " + pod.Status.Reason + ": " + oneLine(pod.Status.Message, 400)
	}
	for _, st := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if t := st.State.Terminated; t != nil && t.ExitCode != 0 {
			msg := fmt.Sprintf("container %s exited %d (%s)", st.Name, t.ExitCode, t.Reason)
			if m := strings.TrimSpace(t.Message); m != "" {
				msg += ": " + oneLine(m, 400)
			}
			return msg
		}
		if w := st.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff" || w.Reason == "InvalidImageName" || w.Reason == "CreateContainerConfigError") {
			return fmt.Sprintf("container %s: %s: %s", st.Name, w.Reason, oneLine(w.Message, 400))
		}
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return "pod " + strings.ToLower(string(pod.Status.Phase)) + ": " + oneLine(pod.Status.Message, 400)
	}
	return ""
}

func podState(pod *corev1.Pod) string {
	s := string(pod.Status.Phase)
	if pod.Status.Reason != "" {
		s += " (" + pod.Status.Reason + ")"
	}
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Reason != "" {
			s += ", " + string(c.Type) + ": " + c.Reason
			if c.Message != "" {
				s += ": " + oneLine(c.Message, 300)
			}
		}
	}
	for _, st := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if w := st.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" {
			s += ", container " + st.Name + " waiting: " + w.Reason
			if w.Message != "" {
				s += ": " + oneLine(w.Message, 300)
			}
		}
	}
	return s
}

// warnings are the namespace's latest Warning events (quota refusals,
// failed mounts, failed scheduling), for what a drill waits on.
func (s *Sandbox) warnings(ctx context.Context, ns string) string {
	evs, err := s.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil || len(evs.Items) == 0 {
		return ""
	}
	// The newest (events are listed by name).
	e := evs.Items[0]
	for _, ev := range evs.Items[1:] {
		if eventTime(ev).After(eventTime(e)) {
			e = ev
		}
	}
	return fmt.Sprintf("; warning on %s %s: %s: %s", strings.ToLower(e.InvolvedObject.Kind), e.InvolvedObject.Name, e.Reason, oneLine(e.Message, 300))
}

// initLog is the tail of the failed container's log, for the error.
func (s *Sandbox) initLog(ctx context.Context, ns string, pod *corev1.Pod) string {
	for _, st := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if t := st.State.Terminated; t != nil && t.ExitCode != 0 {
			tail := int64(5)
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			raw, err := s.Client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: st.Name, TailLines: &tail}).DoRaw(lctx)
			cancel()
			if err == nil && len(raw) > 0 {
				return "; its log ends: " + oneLine(string(raw), 800)
			}
		}
	}
	return ""
}

// waitJob waits for the restore Job to complete.
func (s *Sandbox) waitJob(ctx context.Context, ns string) error {
	said := ""
	for {
		job, err := s.Client.BatchV1().Jobs(ns).Get(ctx, restoreJob, metav1.GetOptions{})
		if err == nil {
			for _, c := range job.Status.Conditions {
				if c.Status != corev1.ConditionTrue {
					continue
				}
				switch c.Type {
				case batchv1.JobComplete, batchv1.JobSuccessCriteriaMet:
					return nil
				case batchv1.JobFailed, batchv1.JobFailureTarget:
					return fmt.Errorf("restore job %s/%s failed: %s%s", ns, restoreJob, oneLine(c.Message, 400), s.jobLog(ctx, ns))
				}
			}
		}
		if pods, err := s.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labelRole + "=restore"}); err == nil {
			for i := range pods.Items {
				if st := "restore job's pod " + podState(&pods.Items[i]) + s.warnings(ctx, ns); st != said {
					said = st
					s.progress(st)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore job %s/%s not complete: %w", ns, restoreJob, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Sandbox) jobLog(ctx context.Context, ns string) string {
	pods, err := s.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labelRole + "=restore"})
	if err != nil {
		return ""
	}
	for i := range pods.Items {
		if msg := s.initLog(ctx, ns, &pods.Items[i]); msg != "" {
			return msg
		}
	}
	return ""
}

// Close stops the forward, deletes the namespace (everything in it goes
// with it: the restored data, the copied identity) and waits until it is
// gone.
func (s *Sandbox) Close(ctx context.Context) error {
	s.mu.Lock()
	ns, stop := s.namespace, s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if ns == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := DeleteNamespace(ctx, s.Client, ns); err != nil {
		return err
	}
	s.progress("namespace deleted")
	return nil
}

// DeleteNamespace deletes a drill namespace and waits until it is gone.
// Its pods go first, at once: nothing in them is kept, and the namespace
// controller otherwise waits out their grace period between passes.
func DeleteNamespace(ctx context.Context, c kubernetes.Interface, ns string) error {
	if err := deleteNamespace(ctx, c, ns); err != nil {
		return err
	}
	why := ""
	for {
		got, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			why = ""
			for _, cond := range got.Status.Conditions {
				if cond.Status == corev1.ConditionTrue {
					why += "; " + cond.Reason + ": " + oneLine(cond.Message, 300)
				}
			}
		} else if ctx.Err() == nil {
			why = "; " + oneLine(err.Error(), 300)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s still terminating (%s)%s", ns, ctx.Err(), why)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// deleteNamespace deletes the namespace's jobs and pods at once, then the
// namespace.
func deleteNamespace(ctx context.Context, c kubernetes.Interface, ns string) error {
	zero := int64(0)
	bg := metav1.DeletePropagationBackground
	// Best effort: the namespace's deletion removes them anyway, later.
	c.BatchV1().Jobs(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg, GracePeriodSeconds: &zero}, metav1.ListOptions{})
	c.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	err := c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{PropagationPolicy: &bg})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	return nil
}

// Janitor deletes the drill namespaces whose expiry has passed (their
// drill was killed before it could), without waiting for them to go.
// Only namespaces with the prefix and a drill id are considered.
func Janitor(ctx context.Context, c kubernetes.Interface, owner string, now time.Time, log *slog.Logger) ([]string, error) {
	// Only this drctl's drills: the owner label, or none when drctl runs
	// with no ServiceAccount of its own (an admin's kubeconfig).
	selector := LabelDrillID + ",!" + LabelOwner
	if owner != "" {
		selector = LabelDrillID + "," + LabelOwner + "=" + owner
	}
	list, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, ns := range list.Items {
		if !strings.HasPrefix(ns.Name, NamespacePrefix) || ns.DeletionTimestamp != nil {
			continue
		}
		exp, err := strconv.ParseInt(ns.Labels[LabelExpires], 10, 64)
		if err != nil || now.Before(time.Unix(exp, 0)) {
			continue // not expired, or not one a drill made whole
		}
		if err := deleteNamespace(ctx, c, ns.Name); err != nil {
			if log != nil {
				log.Warn("janitor: could not delete an expired drill namespace", "namespace", ns.Name, "error", err)
			}
			continue
		}
		removed = append(removed, ns.Name)
	}
	return removed, nil
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[len(s)-max:]
	}
	return s
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	}
	return e.CreationTimestamp.Time
}
