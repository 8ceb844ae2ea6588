package testrig

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Kube is a real Kubernetes control plane on loopback ports: etcd and
// kube-apiserver, and on request kube-controller-manager (the namespace
// and garbage collector controllers: namespaces really go) and kwok with
// one fake node (pods bound to it run and are ready without a container
// runtime; nothing schedules them: a test binds them).
type Kube struct {
	Kubeconfig string
	Kubectl    string
	Server     string // https://127.0.0.1:port
	Token      string // an admin's (system:masters)
	// Node is kwok's fake node, when started.
	Node string
	dir  string
}

// KubeOptions choose what runs beside the API server.
type KubeOptions struct {
	Controllers bool // kube-controller-manager
	Kwok        bool // kwok and its node
}

// Tool finds a program in the Makefile's cache or on PATH.
func Tool(t testing.TB, name, from string) string {
	t.Helper()
	if p, ok := cachedTool(name); ok {
		return p
	}
	Missing(t, "%s (%s; make deps builds it)", name, from)
	return ""
}

// cachedTool is name in the Makefile's cache, else on PATH.
func cachedTool(name string) (string, bool) {
	if p := filepath.Join(CacheDir(), "bin", name); fileExists(p) {
		return p, true
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	return "", false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

//go:embed testdata/kwok-stages.yaml
var kwokStages []byte

// StartKube starts the control plane; everything stops when the test ends.
func StartKube(t testing.TB, opt KubeOptions) *Kube {
	t.Helper()
	etcd := Tool(t, "etcd", "Debian package etcd-server")
	apiserver := Tool(t, "kube-apiserver", "k8s.io/kubernetes")
	kubectl := Tool(t, "kubectl", "k8s.io/kubernetes")
	kcm, kwok := "", ""
	if opt.Controllers {
		kcm = Tool(t, "kube-controller-manager", "k8s.io/kubernetes")
	}
	if opt.Kwok {
		kwok = Tool(t, "kwok", "sigs.k8s.io/kwok")
	}
	dir := t.TempDir()
	start := func(name string, prog string, args ...string) {
		cmd := exec.Command(prog, args...)
		log, _ := os.Create(filepath.Join(dir, name+".log"))
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); log.Close() })
	}
	client, peer := FreePort(t), FreePort(t)
	start("etcd", etcd, "--data-dir", filepath.Join(dir, "etcd"), "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client), "--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer), "--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peer))
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyFile := filepath.Join(dir, "sa.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	tok := make([]byte, 16)
	rand.Read(tok)
	token := hex.EncodeToString(tok)
	os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600)
	port := FreePort(t)
	start("kube-apiserver", apiserver, "--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", client),
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		"--endpoint-reconciler-type", "none", "--cert-dir", filepath.Join(dir, "certs"),
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile, "--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.96.0.0/24", "--disable-admission-plugins", "ServiceAccount")
	k := &Kube{Kubeconfig: filepath.Join(dir, "kubeconfig"), Kubectl: kubectl, Server: fmt.Sprintf("https://127.0.0.1:%d", port), Token: token, dir: dir}
	os.WriteFile(k.Kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %s}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, k.Server, token)), 0o600)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(90 * time.Second)
	for {
		req, _ := http.NewRequest("GET", k.Server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready in 90 s:\n%s", k.Log("kube-apiserver"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if opt.Controllers {
		start("kube-controller-manager", kcm, "--kubeconfig", k.Kubeconfig, "--leader-elect=false", "--secure-port=0",
			"--controllers=namespace-controller,garbage-collector-controller", "--use-service-account-credentials=false")
	}
	if opt.Kwok {
		stages := filepath.Join(dir, "kwok-stages.yaml")
		os.WriteFile(stages, kwokStages, 0o644)
		start("kwok", kwok, "--kubeconfig", k.Kubeconfig, "--config", stages, "--manage-all-nodes=true",
			"--server-address", fmt.Sprintf("127.0.0.1:%d", FreePort(t)), "--cidr", "10.244.0.0/24", "--node-ip", "10.244.1.1")
		k.Node = "kwok-node"
		if out, err := k.Run(t, []byte(`apiVersion: v1
kind: Node
metadata:
  name: kwok-node
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok}
`), "apply", "-f", "-"); err != nil {
			t.Fatalf("create kwok's node: %v\n%s", err, out)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, _ := k.Run(t, nil, "get", "node", k.Node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
			if strings.TrimSpace(out) == "True" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kwok's node not ready in 60 s:\n%s", k.Log("kwok"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return k
}

// Log is the tail of a control-plane program's log.
func (k *Kube) Log(name string) string {
	data, _ := os.ReadFile(filepath.Join(k.dir, name+".log"))
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}

// Run runs kubectl against the control plane as its admin.
func (k *Kube) Run(t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(k.Kubectl, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
