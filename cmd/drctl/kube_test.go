package main_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/testrig"
)

// addressAnnotation is where the player tells drctl-kube (through its
// test hook) where a pod's server really listens.
const addressAnnotation = "test.drctl.io/address"

// podPlayer plays the kubelet and the scheduler for drill pods, which no
// container runtime can run here: it binds them to kwok's node (kwok then
// marks them running and ready), and for the server pod runs, on this
// host, exactly the commands of its init container and container (drctl
// restore or initdb, then postgres) with its environment and its Secret's
// files, paths mapped to a directory of the test's; for the restore Job,
// its command, then the Job's status. It keeps what it saw of each
// namespace for the test to check.
type podPlayer struct {
	t      *testing.T
	c      kubernetes.Interface
	node   string
	work   string
	pg     *testrig.Postgres // its binaries and OS user
	cred   *syscall.Credential
	pgBin  string
	binDir string // drctl's and drctl-kube's

	mu      sync.Mutex
	hold    map[string]bool // processes whose server is never played
	played  map[string]*playedNS
	servers map[string]*exec.Cmd
}

// playedNS is what the player saw in one drill namespace.
type playedNS struct {
	ns       *corev1.Namespace
	pods     []corev1.Pod
	secrets  []corev1.Secret
	quotas   []corev1.ResourceQuota
	limits   []corev1.LimitRange
	policies []networkingv1.NetworkPolicy
	jobs     []batchv1.Job
	services int
	configs  int
	bindings int
	job      *batchv1.Job
	port     int
	jobErr   error
}

func startPodPlayer(t *testing.T, c kubernetes.Interface, node string, pg *testrig.Postgres) *podPlayer {
	p := &podPlayer{t: t, c: c, node: node, work: workDir(t, "pods"), pg: pg, pgBin: pg.BinDir, binDir: filepath.Dir(drctlBin),
		hold: map[string]bool{}, played: map[string]*playedNS{}, servers: map[string]*exec.Cmd{}}
	if uid, gid, ok := pg.ServerUser(); ok {
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			p.step(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		p.mu.Lock()
		defer p.mu.Unlock()
		for ns := range p.servers {
			p.stopServer(ns)
		}
	})
	return p
}

func (p *podPlayer) holdProcess(name string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold[name] = on
}

func (p *podPlayer) step(ctx context.Context) {
	list, err := p.c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	live := map[string]bool{}
	for i := range list.Items {
		ns := &list.Items[i]
		if !strings.HasPrefix(ns.Name, "drctl-drill-") {
			continue
		}
		if ns.DeletionTimestamp != nil {
			continue // its pods die with it
		}
		live[ns.Name] = true
		p.playNamespace(ctx, ns)
	}
	p.mu.Lock()
	for ns := range p.servers {
		if !live[ns] {
			p.stopServer(ns) // the pod is gone: so is its server
		}
	}
	p.mu.Unlock()
}

func (p *podPlayer) playNamespace(ctx context.Context, ns *corev1.Namespace) {
	pods, err := p.c.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, pod := range pods.Items {
		if pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil {
			// No scheduler here: bind as one would.
			p.c.CoreV1().Pods(ns.Name).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns.Name},
				Target: corev1.ObjectReference{Kind: "Node", Name: p.node}}, metav1.CreateOptions{})
		}
	}
	p.mu.Lock()
	seen := p.played[ns.Name]
	held := p.hold[ns.Labels["drctl.io/process"]]
	p.mu.Unlock()
	if seen == nil {
		if held {
			return
		}
		server, err := p.c.CoreV1().Pods(ns.Name).Get(ctx, "postgres", metav1.GetOptions{})
		if err != nil || server.Status.Phase != corev1.PodRunning {
			return
		}
		seen = p.playServer(ctx, ns, server)
		if seen == nil {
			return
		}
	}
	if seen.job == nil {
		if job, err := p.c.BatchV1().Jobs(ns.Name).Get(ctx, "restore", metav1.GetOptions{}); err == nil {
			p.playJob(ctx, ns.Name, seen, job)
		}
	}
}

// snapshot lists what the namespace holds.
func (p *podPlayer) snapshot(ctx context.Context, ns *corev1.Namespace) *playedNS {
	c, n := p.c, ns.Name
	s := &playedNS{ns: ns.DeepCopy()}
	if l, err := c.CoreV1().Pods(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.pods = l.Items
	}
	if l, err := c.CoreV1().Secrets(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.secrets = l.Items
	}
	if l, err := c.CoreV1().ResourceQuotas(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.quotas = l.Items
	}
	if l, err := c.CoreV1().LimitRanges(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.limits = l.Items
	}
	if l, err := c.NetworkingV1().NetworkPolicies(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.policies = l.Items
	}
	if l, err := c.CoreV1().Services(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.services = len(l.Items)
	}
	if l, err := c.CoreV1().ConfigMaps(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.configs = len(l.Items)
	}
	if l, err := c.RbacV1().RoleBindings(n).List(ctx, metav1.ListOptions{}); err == nil {
		s.bindings = len(l.Items)
	}
	return s
}

// local maps a container path to the namespace's directory here.
func (p *podPlayer) local(ns string) func(string) string {
	base := filepath.Join(p.work, ns)
	r := strings.NewReplacer("/var/lib/postgresql/data", base+"/data", "/run/postgresql", base+"/run", drill.SecretDir, base+"/drill", "/tmp", base+"/tmp")
	return r.Replace
}

// run runs a container's command here, as the pod's user would.
func (p *podPlayer) command(ns string, argv []string, env []corev1.EnvVar, extra ...string) *exec.Cmd {
	mapPath := p.local(ns)
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = mapPath(a)
	}
	prog := args[0]
	if !strings.Contains(prog, "/") {
		for _, d := range []string{p.binDir, p.pgBin, "/usr/bin", "/bin"} {
			if _, err := os.Stat(filepath.Join(d, prog)); err == nil {
				prog = filepath.Join(d, prog)
				break
			}
		}
	}
	cmd := exec.Command(prog, args[1:]...)
	cmd.Env = []string{"PATH=" + p.binDir + ":" + p.pgBin + ":/usr/bin:/bin", "LC_ALL=C"}
	for _, e := range env {
		cmd.Env = append(cmd.Env, e.Name+"="+mapPath(e.Value))
	}
	cmd.Env = append(cmd.Env, extra...)
	cmd.Dir = filepath.Join(p.work, ns, "tmp")
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

func (p *podPlayer) playServer(ctx context.Context, ns *corev1.Namespace, pod *corev1.Pod) *playedNS {
	t := p.t
	seen := p.snapshot(ctx, ns)
	base := filepath.Join(p.work, ns.Name)
	for _, d := range []string{"", "data", "run", "tmp", "drill"} {
		os.MkdirAll(filepath.Join(base, d), 0o700)
		p.pg.GiveToServer(t, filepath.Join(base, d))
	}
	secret, err := p.c.CoreV1().Secrets(ns.Name).Get(ctx, "drctl-drill", metav1.GetOptions{})
	if err != nil {
		t.Errorf("player: the drill's secret: %v", err)
		return nil
	}
	for k, v := range secret.Data {
		f := filepath.Join(base, "drill", k)
		os.WriteFile(f, v, 0o600)
		p.pg.GiveToServer(t, f)
	}
	init := pod.Spec.InitContainers[0]
	if out, err := p.command(ns.Name, init.Command, init.Env).CombinedOutput(); err != nil {
		t.Logf("player: init container %s of %s failed: %v\n%s", init.Name, ns.Name, err, out)
		p.mu.Lock()
		p.played[ns.Name] = seen
		p.mu.Unlock()
		// As a kubelet would: the init container terminated, non-zero.
		pod.Status.Phase = corev1.PodFailed
		pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: init.Name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", Message: strings.TrimSpace(string(out))}}}}
		p.c.CoreV1().Pods(ns.Name).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return seen
	}
	port := testrig.FreePort(t)
	server := pod.Spec.Containers[0]
	argv := slices.Clone(server.Command)
	for i, a := range argv {
		switch {
		case a == "port=5432":
			argv[i] = "port=" + strconv.Itoa(port)
		case a == "listen_addresses=*":
			argv[i] = "listen_addresses=127.0.0.1"
		}
	}
	cmd := p.command(ns.Name, argv, server.Env)
	log, _ := os.Create(filepath.Join(base, "server.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Errorf("player: start the server of %s: %v", ns.Name, err)
		return nil
	}
	p.mu.Lock()
	p.servers[ns.Name] = cmd
	p.mu.Unlock()
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	seen.port = port
	p.mu.Lock()
	p.played[ns.Name] = seen
	p.mu.Unlock()
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	fresh, err := p.c.CoreV1().Pods(ns.Name).Get(ctx, pod.Name, metav1.GetOptions{})
	if err == nil {
		if fresh.Annotations == nil {
			fresh.Annotations = map[string]string{}
		}
		fresh.Annotations[addressAnnotation] = fmt.Sprintf("127.0.0.1:%d", port)
		if _, err := p.c.CoreV1().Pods(ns.Name).Update(ctx, fresh, metav1.UpdateOptions{}); err != nil {
			t.Errorf("player: annotate %s: %v", ns.Name, err)
		}
	}
	return seen
}

func (p *podPlayer) playJob(ctx context.Context, ns string, seen *playedNS, job *batchv1.Job) {
	c := job.Spec.Template.Spec.Containers[0]
	out, err := p.command(ns, c.Command, c.Env, "PGHOST=127.0.0.1", "PGPORT="+strconv.Itoa(seen.port)).CombinedOutput()
	if err != nil {
		p.t.Logf("player: job of %s failed: %v\n%s", ns, err, out)
	}
	jobs, _ := p.c.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
	now := metav1.Now()
	job.Status.StartTime = &now
	if err == nil {
		job.Status.CompletionTime = &now
		job.Status.Succeeded = 1
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now}}
	} else {
		job.Status.Failed = 1
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now, Reason: "BackoffLimitExceeded", Message: "the restore failed"},
			{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now, Reason: "BackoffLimitExceeded", Message: "the restore failed"}}
	}
	if _, uerr := p.c.BatchV1().Jobs(ns).UpdateStatus(ctx, job, metav1.UpdateOptions{}); uerr != nil {
		p.t.Errorf("player: job status of %s: %v", ns, uerr)
	}
	p.mu.Lock()
	seen.job, seen.jobErr = job.DeepCopy(), err
	if jobs != nil {
		seen.jobs = jobs.Items
	}
	p.mu.Unlock()
}

// stopServer stops a namespace's server (p.mu held).
func (p *podPlayer) stopServer(ns string) {
	cmd := p.servers[ns]
	delete(p.servers, ns)
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGQUIT)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func kubeClient(t *testing.T, k *testrig.Kube) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: k.Server, BearerToken: k.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drillNamespaces lists the drill namespaces, terminating ones included.
func drillNamespaces(t *testing.T, c kubernetes.Interface) []string {
	t.Helper()
	list, err := c.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ns := range list.Items {
		if strings.HasPrefix(ns.Name, "drctl-drill-") {
			out = append(out, ns.Name)
		}
	}
	return out
}

// TestKubernetesDrills: drills in scratch namespaces of a real API server
// (kube-apiserver, kube-controller-manager, kwok's node), their pods
// played on this host by the commands their specs give. A passing drill
// of each mode, with every object it made checked from the API; a failing
// check; a timeout; SIGINT; a namespace a killed runner left, removed by
// the janitor. No namespace outlives its drill.
func TestKubernetesDrills(t *testing.T) {
	k := testrig.StartKube(t, testrig.KubeOptions{Controllers: true, Kwok: true})
	c := kubeClient(t, k)
	r := newDaemonRig(t, true, "archive_timeout=1")
	player := startPodPlayer(t, c, k.Node, r.pg)
	r.pg.Exec(t, "postgres", "CREATE DATABASE pos")
	r.pg.Exec(t, "postgres", "CREATE DATABASE finance")
	r.pg.Exec(t, "pos", "CREATE TABLE pos_order (id serial PRIMARY KEY, write_date timestamptz NOT NULL DEFAULT now()); INSERT INTO pos_order SELECT FROM generate_series(1, 1000)")
	r.pg.Exec(t, "finance", "CREATE TABLE ledger (id serial PRIMARY KEY, amount numeric NOT NULL); INSERT INTO ledger (amount) SELECT g FROM generate_series(1, 100) g")
	endpoint, err := url.Parse(r.srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	s3port := endpoint.Port()
	cfg := r.config(t, "kube.yaml", fmt.Sprintf(`drill:
  sandbox: kubernetes
  kubernetes:
    kubeconfig: %s
    image: registry.example/drctl:test
    cpu: "1"
    memory: 1Gi
    storage: 2Gi
    egress_cidrs: [127.0.0.1/32]
    egress_ports: [%s]
processes:
  - name: pos-sync
    database: pos
    mode: pitr
    rpo: 1h
    rto: 10m
    drill: {max_age: 7d, timeout: 10m}
    checks:
      - {name: orders present, sql: "SELECT count(*) FROM pos_order", expect: ">= 1000"}
  - name: finance
    database: finance
    mode: logical
    rpo: 1h
    rto: 10m
    drill: {max_age: 7d, timeout: 10m}
    checks:
      - {name: ledger present, sql: "SELECT count(*) FROM ledger", expect: ">= 100"}
  - name: finance-strict
    database: finance
    mode: logical
    rpo: 1h
    rto: 10m
    drill: {max_age: 7d, timeout: 10m}
    checks:
      - {name: a million entries, sql: "SELECT count(*) FROM ledger", expect: ">= 1000000"}
  - name: finance-slow
    database: finance
    mode: logical
    rpo: 1h
    rto: 10s
    drill: {max_age: 7d, timeout: 10s}
    checks:
      - {name: ledger present, sql: "SELECT count(*) FROM ledger", expect: ">= 100"}
`, k.Kubeconfig, s3port))
	env := []string{"DRCTL_KUBE_TEST_ADDRESS_ANNOTATION=" + addressAnnotation}
	mustRun(t, []string{"DRCTL_DSN=" + r.pg.DSN("pos")}, "--config", cfg, "basebackup", "--label", "process=pos-sync")
	var dump struct{ ID string }
	for _, p := range []string{"finance-strict", "finance-slow", "finance"} {
		decodeJSON(t, mustRun(t, []string{"DRCTL_DSN=" + r.pg.DSN("finance")}, "--config", cfg, "backup", "--json", "--label", "process="+p).stdout, &dump)
		mustRun(t, nil, "--config", cfg, "verify", dump.ID)
	}
	secretsOf := func() []string {
		id, _ := os.ReadFile(r.keys.IdentityFile)
		var out []string
		for _, l := range strings.Split(string(id), "\n") {
			if strings.HasPrefix(l, "AGE-SECRET-KEY-") {
				out = append(out, l)
			}
		}
		return append(out, r.srv.SecretKey)
	}()
	type record struct {
		DrillID string `json:"drill_id"`
		Passed  bool
		Sandbox string
		Error   string
		Phases  []struct{ Name string }
		Checks  []struct {
			Name   string
			Passed bool
		}
	}
	drillOnce := func(process string) (record, result) {
		t.Helper()
		var rec record
		start := time.Now()
		res := drctl(t, env, "--config", cfg, "--log-level", "info", "drill", "--process", process, "--json")
		t.Logf("drill of %s: exit %d in %s\n%s", process, res.code, time.Since(start).Round(time.Millisecond), res.stderr)
		if strings.Contains(res.stderr, "could not remove") {
			t.Fatalf("drill of %s: the sandbox's removal failed\n%s", process, res.all())
		}
		if res.stdout != "" {
			decodeJSON(t, res.stdout, &rec)
		}
		if left := drillNamespaces(t, c); len(left) != 0 {
			t.Fatalf("drill of %s left namespaces %v\n%s", process, left, res.all())
		}
		return rec, res
	}

	// A dump, restored by a Job into the pod's server.
	rec, res := drillOnce("finance")
	if res.code != 0 || !rec.Passed || rec.Sandbox != "kubernetes" || len(rec.Checks) != 1 {
		t.Fatalf("kubernetes drill of finance: exit %d\n%s", res.code, res.all())
	}
	ns := ""
	player.mu.Lock()
	for name, s := range player.played {
		if s.ns.Labels["drctl.io/process"] == "finance" {
			ns = name
		}
	}
	seen := player.played[ns]
	player.mu.Unlock()
	if seen == nil || seen.job == nil || seen.jobErr != nil {
		t.Fatalf("the player did not play finance's namespace and job: %+v", seen)
	}
	checkDrillObjects(t, seen, rec.DrillID, "finance", dump.ID, s3port, secretsOf, r.srv.CAFile != "")

	// A base backup, restored by the init container, replayed, promoted.
	rec, res = drillOnce("pos-sync")
	if res.code != 0 || !rec.Passed || len(rec.Phases) != 3 {
		t.Fatalf("kubernetes drill of pos-sync: exit %d\n%s", res.code, res.all())
	}
	for name, s := range player.played {
		if s.ns.Labels["drctl.io/process"] == "pos-sync" {
			init := s.pods[0].Spec.InitContainers[0]
			if init.Name != "restore" || len(init.Command) != 5 || init.Command[1] != "restore" || init.Command[3] != "--to" {
				t.Fatalf("pos-sync's init container in %s: %v", name, init.Command)
			}
			if s.job != nil || len(s.jobs) != 0 {
				t.Fatalf("a pitr drill made a job in %s", name)
			}
		}
	}

	// A check that fails: recorded as failed, exit 4, namespace gone.
	rec, res = drillOnce("finance-strict")
	if res.code != 4 || rec.Passed || !strings.Contains(rec.Error, "a million entries") {
		t.Fatalf("failing drill: exit %d\n%s", res.code, res.all())
	}
	// A pod that never serves: the drill's timeout stops it.
	player.holdProcess("finance-slow", true)
	rec, res = drillOnce("finance-slow")
	if res.code != 4 || rec.Passed || !strings.Contains(rec.Error, "stopped by the drill timeout") || !strings.Contains(rec.Error, "(the sandbox was at: ") {
		t.Fatalf("timed-out drill: exit %d\n%s", res.code, res.all())
	}

	// A drill of finance, held before its server is played, started in a
	// process group of its own, once its namespace exists.
	startHeld := func() (*exec.Cmd, *strings.Builder) {
		cmd := exec.Command(drctlBin, "--config", cfg, "drill", "--process", "finance")
		cmd.Env = append(os.Environ(), env...)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the drill's namespace", 60*time.Second, func() bool { return len(drillNamespaces(t, c)) == 1 })
		return cmd, out
	}

	// SIGINT while the pod is being waited for.
	player.holdProcess("finance", true)
	cmd, out := startHeld()
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	if err == nil || !strings.Contains(out.String(), "its sandbox is removed") {
		t.Fatalf("drill after SIGINT: %v\n%s", err, out.String())
	}
	if left := drillNamespaces(t, c); len(left) != 0 {
		t.Fatalf("SIGINT left namespaces %v\n%s", left, out.String())
	}

	// Killed outright, runner and helper: the namespace stays until it
	// expires; then the janitor (drctl-kube janitor, and every drill's
	// start) deletes it.
	cmd, _ = startHeld()
	time.Sleep(time.Second) // its objects too
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	left := drillNamespaces(t, c)
	if len(left) != 1 {
		t.Fatalf("after a kill: namespaces %v", left)
	}
	janitor := func() string {
		out, err := exec.Command(filepath.Join(filepath.Dir(drctlBin), "drctl-kube"), "janitor", "--kubeconfig", k.Kubeconfig).CombinedOutput()
		if err != nil {
			t.Fatalf("drctl-kube janitor: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := janitor(); out != "" {
		t.Fatalf("the janitor deleted a namespace that has not expired: %s", out)
	}
	// Time passes: its expiry is now in the past.
	nsObj, err := c.CoreV1().Namespaces().Get(context.Background(), left[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["drctl.io/expires"] = strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10)
	if _, err := c.CoreV1().Namespaces().Update(context.Background(), nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out := janitor(); !strings.Contains(out, "deleted expired drill namespace "+left[0]) {
		t.Fatalf("janitor: %q", out)
	}
	waitUntil(t, "the expired namespace to go", 120*time.Second, func() bool { return len(drillNamespaces(t, c)) == 0 })
	player.holdProcess("finance", false)

	// The daemon runs the janitor too (at its start, then every 15
	// minutes): a namespace a killed drill left, expired, goes.
	expired := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "drctl-drill-finance-0ld0ld0l", Labels: map[string]string{
		"drctl.io/drill-id": "0ld0ld0ld0ld", "drctl.io/process": "finance", "pod-security.kubernetes.io/enforce": "restricted",
		"drctl.io/expires": strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)}}}
	if _, err := c.CoreV1().Namespaces().Create(context.Background(), expired, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	daemonCfg := r.config(t, "kube-daemon.yaml", fmt.Sprintf("listen: %s\ndrill:\n  sandbox: kubernetes\n  kubernetes:\n    kubeconfig: %s\njobs: []\n", freeAddr(t), k.Kubeconfig))
	daemon := exec.Command(drctlBin, "daemon", "--config", daemonCfg)
	var dout strings.Builder
	daemon.Stdout, daemon.Stderr = &dout, &dout
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the daemon's janitor to delete the expired namespace", 120*time.Second, func() bool { return len(drillNamespaces(t, c)) == 0 })
	daemon.Process.Signal(syscall.SIGTERM)
	daemon.Wait()
	if !strings.Contains(dout.String(), "deleted expired drill namespace drctl-drill-finance-0ld0ld0l") {
		t.Fatalf("daemon log:\n%s", dout.String())
	}

	// The records are the same as a local drill's: check judges by them.
	if res := drctl(t, nil, "--config", cfg, "policy", "check", "--process", "finance", "--process", "pos-sync"); res.code != 0 {
		t.Fatalf("policy check after kubernetes drills: exit %d\n%s", res.code, res.all())
	}
}

// checkDrillObjects asserts what a logical drill's namespace held.
func checkDrillObjects(t *testing.T, s *playedNS, drillID, process, backupID, s3port string, secrets []string, tls bool) {
	t.Helper()
	l := s.ns.Labels
	exp, err := strconv.ParseInt(l["drctl.io/expires"], 10, 64)
	if l["drctl.io/drill-id"] != drillID || l["drctl.io/process"] != process || l["pod-security.kubernetes.io/enforce"] != "restricted" ||
		err != nil || time.Unix(exp, 0).Before(time.Now()) {
		t.Fatalf("namespace labels: %v (drill %s)", l, drillID)
	}
	if !strings.HasPrefix(s.ns.Name, "drctl-drill-"+process+"-") {
		t.Fatalf("namespace name %s", s.ns.Name)
	}
	// Exactly these objects, nothing else.
	if len(s.pods) != 1 || s.pods[0].Name != "postgres" || len(s.secrets) != 1 || len(s.quotas) != 1 || len(s.limits) != 1 ||
		len(s.policies) != 1 || s.services != 0 || s.configs != 0 || s.bindings != 0 || len(s.jobs) != 1 {
		t.Fatalf("objects: %d pods, %d secrets, %d quotas, %d limit ranges, %d network policies, %d services, %d configmaps, %d rolebindings, %d jobs",
			len(s.pods), len(s.secrets), len(s.quotas), len(s.limits), len(s.policies), s.services, s.configs, s.bindings, len(s.jobs))
	}
	if q := s.quotas[0].Spec.Hard; q.Pods().String() != "2" || q.Name(corev1.ResourceLimitsMemory, "").String() != "2Gi" {
		t.Fatalf("quota: %v", q)
	}
	np := s.policies[0].Spec
	if len(np.PodSelector.MatchLabels) != 0 || len(np.PolicyTypes) != 2 {
		t.Fatalf("network policy selects %v, types %v", np.PodSelector, np.PolicyTypes)
	}
	// Ingress: only the restore Job, to PostgreSQL's port (no runner in
	// the cluster here). Egress: DNS, the object store, the server.
	if len(np.Ingress) != 1 || np.Ingress[0].From[0].PodSelector.MatchLabels["drctl.io/role"] != "restore" || np.Ingress[0].Ports[0].Port.IntValue() != 5432 {
		t.Fatalf("ingress: %+v", np.Ingress)
	}
	if len(np.Egress) != 3 || np.Egress[0].Ports[0].Port.IntValue() != 53 || np.Egress[0].To[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "kube-system" ||
		np.Egress[1].To[0].IPBlock == nil ||
		np.Egress[1].To[0].IPBlock.CIDR != "127.0.0.1/32" || np.Egress[1].Ports[0].Port.String() != s3port ||
		np.Egress[2].To[0].PodSelector.MatchLabels["drctl.io/role"] != "server" {
		t.Fatalf("egress: %+v", np.Egress)
	}
	pod := s.pods[0].Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken || pod.SecurityContext.RunAsNonRoot == nil ||
		!*pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Fatalf("pod security: %+v", pod.SecurityContext)
	}
	job := s.jobs[0].Spec.Template.Spec
	containers := append(append(slices.Clone(pod.InitContainers), pod.Containers...), job.Containers...)
	for _, ct := range containers {
		sc := ct.SecurityContext
		if sc == nil || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Fatalf("container %s security: %+v", ct.Name, sc)
		}
		if ct.Resources.Limits.Memory().String() != "1Gi" {
			t.Fatalf("container %s limits: %v", ct.Name, ct.Resources.Limits)
		}
	}
	if init := pod.InitContainers[0]; init.Name != "initdb" || init.Command[0] != "initdb" {
		t.Fatalf("init container: %v", init.Command)
	}
	// The server of a dump sees its pg_hba.conf, not the repository's keys.
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.MountPath == drill.SecretDir && m.Name != "server" {
			t.Fatalf("the server mounts %s", m.Name)
		}
	}
	if pod.ActiveDeadlineSeconds == nil || *pod.ActiveDeadlineSeconds < 60 {
		t.Fatalf("the server pod has no deadline: %v", pod.ActiveDeadlineSeconds)
	}
	if cmd := job.Containers[0].Command; !slices.Contains(cmd, backupID) || !strings.Contains(strings.Join(cmd, " "), "drctl restore") {
		t.Fatalf("restore job: %v", cmd)
	}
	// No secret in any argument or environment value: they are files of
	// the Secret.
	pgpass := string(s.secrets[0].Data["pgpass"])
	for _, ct := range containers {
		words := slices.Clone(ct.Command)
		for _, e := range ct.Env {
			if e.ValueFrom != nil {
				t.Fatalf("container %s: env %s from %v", ct.Name, e.Name, e.ValueFrom)
			}
			words = append(words, e.Value)
		}
		for _, w := range words {
			for _, secret := range append(slices.Clone(secrets), strings.TrimSpace(pgpass)) {
				if secret != "" && strings.Contains(w, secret) {
					t.Fatalf("container %s carries a secret in %q", ct.Name, w)
				}
			}
		}
	}
	keys := []string{}
	for k := range s.secrets[0].Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"age-identity", "aws-credentials", "pg_hba.conf", "pgpass", "pgpassfile"}
	if tls {
		want = []string{"age-identity", "aws-credentials", "ca-bundle.pem", "pg_hba.conf", "pgpass", "pgpassfile"}
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("secret keys %v, want %v", keys, want)
	}
}
