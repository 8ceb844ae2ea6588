// Package helm holds drctl's Helm chart; this test lints and renders it
// with helm, then has a real kube-apiserver (over etcd) accept it, and
// proves its least privilege by impersonation and its admission policy by
// refused requests.
package helm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	drillpkg "github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/testrig"
)

// tool finds a program in the Makefile's cache or on PATH.
func tool(t *testing.T, name, pkg string) string { return testrig.Tool(t, name, pkg) }

func run(t *testing.T, stdin []byte, prog string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(prog, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func must(t *testing.T, stdin []byte, prog string, args ...string) string {
	t.Helper()
	out, err := run(t, stdin, prog, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(prog), strings.Join(args, " "), err, out)
	}
	return out
}

const chart = "drctl"

// kubeVersion is the control plane the tests run (the Makefile's
// K8S_VERSION); helm built from source would assume an old one.
const kubeVersion = "1.37.2"

func TestChartLintAndTemplate(t *testing.T) {
	helm := tool(t, "helm", "helm.sh/helm/v3")
	must(t, nil, helm, "lint", chart, "--strict", "--kube-version", kubeVersion, "--set", "drills.enabled=true,drills.egressCIDRs={10.1.0.0/16},podMonitor.enabled=true,prometheusRule.enabled=true")
	out := must(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--namespace", "erp", "--set", "drills.enabled=true,drills.egressCIDRs={10.1.0.0/16},podMonitor.enabled=true,prometheusRule.enabled=true")
	for _, want := range []string{"kind: Deployment", "kind: ValidatingAdmissionPolicy", "kind: PodMonitor", "honorLabels: true", "kind: PrometheusRule",
		"alert: DrctlJobFailing", "readOnlyRootFilesystem: true", "runAsNonRoot: true", "type: RuntimeDefault", "- ALL", "path: /healthz",
		"system:serviceaccount:erp:db-drctl", "helm.sh/hook: post-install,post-upgrade"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm template lacks %q", want)
		}
	}
	// Drills with the namespace's default ServiceAccount: refused.
	if out, err := run(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--set", "drills.enabled=true,drills.egressCIDRs={10.1.0.0/16},serviceAccount.create=false"); err == nil || !strings.Contains(out, "needs a ServiceAccount of its own") {
		t.Fatalf("drills with the default ServiceAccount: %v\n%s", err, out)
	}
	// Drills without the object store's addresses: refused.
	if out, err := run(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--set", "drills.enabled=true"); err == nil || !strings.Contains(out, "needs drills.egressCIDRs") {
		t.Fatalf("drills without egress CIDRs: %v\n%s", err, out)
	}
	// The drill: section the chart writes is one drctl reads: its
	// sandbox, image, role, ServiceAccount and runner.
	for _, want := range []string{"sandbox: kubernetes", `drill_role: "db-drctl-erp-drill"`, `service_account: "erp/db-drctl"`, `egress_cidrs: ["10.1.0.0/16"]`} {
		if !strings.Contains(out, want) {
			t.Errorf("the rendered config lacks %q", want)
		}
	}
	checkRenderedConfig(t, out)
	// The chart's copy of the rules is the rules.
	a, _ := os.ReadFile(filepath.Join(chart, "files", "drctl-rules.yml"))
	b, _ := os.ReadFile(filepath.Join("..", "prometheus", "drctl-rules.yml"))
	if !bytes.Equal(a, b) {
		t.Fatal("deploy/helm/drctl/files/drctl-rules.yml differs from deploy/prometheus/drctl-rules.yml: copy it again")
	}
}

// controlPlane is etcd and kube-apiserver on loopback ports, and a
// kubeconfig for an admin token.
type controlPlane struct{ k *testrig.Kube }

func startControlPlane(t *testing.T) *controlPlane {
	return &controlPlane{testrig.StartKube(t, testrig.KubeOptions{})}
}

func (c *controlPlane) kubectlRun(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	return c.k.Run(t, stdin, args...)
}

// The rendered chart is accepted by a real kube-apiserver, dry run then
// for real; its ServiceAccount can do what drills need and nothing else;
// the admission policy refuses what RBAC cannot.
func TestChartOnARealAPIServer(t *testing.T) {
	helm := tool(t, "helm", "helm.sh/helm/v3")
	cp := startControlPlane(t)
	kube := func(stdin []byte, args ...string) string {
		t.Helper()
		out, err := cp.kubectlRun(t, stdin, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	kube(nil, "create", "namespace", "erp")
	// mode: sidecar: the snippet, added to a PostgreSQL StatefulSet, is
	// accepted by the API server.
	sidecar := must(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--namespace", "erp",
		"--set", "mode=sidecar,sidecar.podLabels.app=erp-db,drills.enabled=true,drills.egressCIDRs={10.1.0.0/16}")
	if strings.Contains(sidecar, "kind: Deployment") || !strings.Contains(sidecar, "name: db-drctl-sidecar") {
		t.Fatalf("mode sidecar rendered:\n%s", sidecar)
	}
	sts := "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: erp-db, namespace: erp}\nspec:\n  serviceName: erp-db\n" +
		"  selector: {matchLabels: {app: erp-db}}\n  template:\n    metadata: {labels: {app: erp-db}}\n    spec:\n" +
		indent(snippet(t, sidecar, "pod.yaml"), 6) +
		"      containers:\n        - {name: postgres, image: postgres:15}\n" + indent(snippet(t, sidecar, "containers.yaml"), 8) +
		"      volumes:\n" + indent(snippet(t, sidecar, "volumes.yaml"), 8)
	kube([]byte(sts), "apply", "--server-side", "--dry-run=server", "-f", "-")
	if out, err := run(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--set", "mode=sidecar"); err == nil || !strings.Contains(out, "needs sidecar.podLabels") {
		t.Fatalf("mode sidecar without the pods' labels: %v\n%s", err, out)
	}
	rendered := []byte(must(t, nil, helm, "template", "db", chart, "--kube-version", kubeVersion, "--namespace", "erp", "--set", "drills.enabled=true,drills.egressCIDRs={10.1.0.0/16}"))
	kube(rendered, "apply", "--server-side", "--dry-run=server", "-n", "erp", "-f", "-")
	kube(rendered, "apply", "--server-side", "-n", "erp", "-f", "-")
	sa := "system:serviceaccount:erp:db-drctl"
	can := func(args ...string) string {
		out, _ := cp.kubectlRun(t, nil, append([]string{"auth", "can-i", "--as", sa}, args...)...)
		// The answer is the last line (warnings come before it).
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return strings.TrimSpace(lines[len(lines)-1])
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "namespaces"}, "yes"},
		{[]string{"delete", "namespaces"}, "yes"},
		{[]string{"create", "rolebindings", "-n", "drctl-drill-x"}, "yes"},
		{[]string{"bind", "clusterroles/db-drctl-erp-drill"}, "yes"},
		{[]string{"bind", "clusterroles/cluster-admin"}, "no"},
		{[]string{"get", "secrets", "-n", "erp"}, "no"},
		{[]string{"get", "secrets", "--all-namespaces"}, "no"},
		{[]string{"create", "pods", "-n", "erp"}, "no"},
		{[]string{"get", "pods", "-n", "kube-system"}, "no"},
		{[]string{"create", "clusterrolebindings"}, "no"},
		{[]string{"delete", "deployments", "-n", "erp"}, "no"},
	} {
		if got := can(c.args...); got != c.want {
			t.Errorf("can-i %s as the chart's ServiceAccount: %s, want %s", strings.Join(c.args, " "), got, c.want)
		}
	}
	as := func(stdin []byte, args ...string) (string, error) {
		return cp.kubectlRun(t, stdin, append([]string{"--as", sa}, args...)...)
	}
	namespace := func(name string, labels map[string]string) []byte {
		var l []string
		for k, v := range labels {
			l = append(l, fmt.Sprintf("    %s: %q", k, v))
		}
		return []byte(fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n%s\n", name, strings.Join(l, "\n")))
	}
	owner := drillpkg.Owner("erp/db-drctl")
	drill := map[string]string{"drctl.io/drill-id": "0123456789abcdef", "drctl.io/process": "pos-sync", "drctl.io/expires": "1795780800",
		"pod-security.kubernetes.io/enforce": "restricted", "drctl.io/owner": owner}
	without := func(key string) map[string]string {
		m := map[string]string{}
		for k, v := range drill {
			if k != key {
				m[k] = v
			}
		}
		return m
	}
	// The admission policy takes a moment to be in force.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := as(namespace("evil", drill), "create", "-f", "-")
		if err != nil && strings.Contains(out, "drctl may only create namespaces named drctl-drill-*") {
			break
		}
		if err == nil {
			kube(nil, "delete", "namespace", "evil", "--wait=false")
		}
		if time.Now().After(deadline) {
			t.Fatalf("a namespace without the prefix was not refused: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out, err := as(namespace("drctl-drill-nolabels", without("drctl.io/drill-id")), "create", "-f", "-"); err == nil || !strings.Contains(out, "carrying the drctl.io/drill-id") {
		t.Fatalf("a drill namespace without its labels: %v\n%s", err, out)
	}
	privileged := without("pod-security.kubernetes.io/enforce")
	privileged["pod-security.kubernetes.io/enforce"] = "privileged"
	if out, err := as(namespace("drctl-drill-privileged", privileged), "create", "-f", "-"); err == nil || !strings.Contains(out, "enforce: restricted") {
		t.Fatalf("a drill namespace allowing privileged pods: %v\n%s", err, out)
	}
	// Another owner's label: refused (it would be another release's).
	stolen := without("drctl.io/owner")
	stolen["drctl.io/owner"] = drillpkg.Owner("crm/db-drctl")
	if out, err := as(namespace("drctl-drill-stolen", stolen), "create", "-f", "-"); err == nil || !strings.Contains(out, "its own drctl.io/owner") {
		t.Fatalf("a drill namespace with another owner: %v\n%s", err, out)
	}
	// A drctl-drill-* namespace somebody else made is not drctl's to delete.
	kube(namespace("drctl-drill-theirs", map[string]string{"team": "dba"}), "create", "-f", "-")
	if out, err := as(nil, "delete", "namespace", "drctl-drill-theirs", "--wait=false"); err == nil || !strings.Contains(out, "only delete the drill namespaces it made") {
		t.Fatalf("deleting another team's drctl-drill-* namespace: %v\n%s", err, out)
	}
	// Another release's drill namespace (made by its drctl, with its
	// owner): not this one's to delete, nor to bind its role in.
	kube(namespace("drctl-drill-crm", stolen), "create", "-f", "-")
	if out, err := as(nil, "delete", "namespace", "drctl-drill-crm", "--wait=false"); err == nil || !strings.Contains(out, "only delete the drill namespaces it made") {
		t.Fatalf("deleting another release's drill namespace: %v\n%s", err, out)
	}
	if out, err := as(namespace("drctl-drill-ok", drill), "create", "-f", "-"); err != nil {
		t.Fatalf("a proper drill namespace was refused: %v\n%s", err, out)
	}
	binding := func(namespace, role, subject string) []byte {
		return []byte(fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: drill, namespace: %s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [%s]
`, namespace, role, subject))
	}
	self := "{kind: ServiceAccount, name: db-drctl, namespace: erp}"
	// What RBAC alone would allow, refused by the admission policy alone:
	// the drill role bound outside a drill namespace, the chart's own
	// cluster role bound (the ServiceAccount holds all of its rights), the
	// drill role bound to everybody.
	for _, c := range []struct {
		what, manifest, message string
	}{
		{"the drill role in erp", string(binding("erp", "db-drctl-erp-drill", self)), "act only in its own drctl-drill-* namespaces"},
		{"the chart's cluster role", string(binding("drctl-drill-ok", "db-drctl-erp-drills", self)), "bind only the drill role"},
		{"the drill role to every user", string(binding("drctl-drill-ok", "db-drctl-erp-drill", "{kind: Group, name: system:authenticated, apiGroup: rbac.authorization.k8s.io}")), "bind only the drill role, and only to itself"},
	} {
		if out, err := as([]byte(c.manifest), "create", "-f", "-"); err == nil || !strings.Contains(out, c.message) {
			t.Fatalf("binding %s: %v\n%s", c.what, err, out)
		}
	}
	if out, err := as(binding("drctl-drill-crm", "db-drctl-erp-drill", self), "create", "-f", "-"); err == nil || !strings.Contains(out, "act only in its own drctl-drill-* namespaces") {
		t.Fatalf("binding its role in another release's drill namespace: %v\n%s", err, out)
	}
	if out, err := as(binding("drctl-drill-ok", "cluster-admin", self), "create", "-f", "-"); err == nil {
		t.Fatalf("the ServiceAccount bound cluster-admin in its drill namespace:\n%s", out)
	}
	if out, err := as(binding("drctl-drill-ok", "db-drctl-erp-drill", self), "create", "-f", "-"); err != nil {
		t.Fatalf("binding the drill role in the drill namespace was refused: %v\n%s", err, out)
	}
	// Now it may make a drill's objects there, and still nothing elsewhere.
	if got := can("create", "pods", "-n", "drctl-drill-ok"); got != "yes" {
		t.Fatalf("after the binding, create pods in the drill namespace: %s", got)
	}
	if got := can("get", "secrets", "-n", "drctl-drill-ok"); got != "no" {
		t.Fatalf("read secrets in the drill namespace: %s", got)
	}
	// What a drill's cleanup and diagnosis need there, and only there.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"deletecollection", "pods", "-n", "drctl-drill-ok"}, "yes"},
		{[]string{"deletecollection", "jobs.batch", "-n", "drctl-drill-ok"}, "yes"},
		{[]string{"list", "events", "-n", "drctl-drill-ok"}, "yes"},
		{[]string{"create", "pods/portforward", "-n", "drctl-drill-ok"}, "yes"},
		{[]string{"deletecollection", "pods", "-n", "erp"}, "no"},
		{[]string{"list", "events", "-n", "erp"}, "no"},
		{[]string{"create", "services", "-n", "drctl-drill-ok"}, "no"},
		{[]string{"create", "persistentvolumeclaims", "-n", "drctl-drill-ok"}, "no"},
	} {
		if got := can(c.args...); got != c.want {
			t.Errorf("can-i %s after the binding: %s, want %s", strings.Join(c.args, " "), got, c.want)
		}
	}
	if out, err := as(nil, "delete", "namespace", "erp"); err == nil || !strings.Contains(out, "only delete the drill namespaces it made") {
		t.Fatalf("the ServiceAccount deleted a namespace that is not a drill's: %v\n%s", err, out)
	}
	if out, err := as(nil, "delete", "namespace", "drctl-drill-ok", "--wait=false"); err != nil {
		t.Fatalf("deleting its drill namespace was refused: %v\n%s", err, out)
	}
}

// checkRenderedConfig has drctl read the config file the chart renders:
// no key of the drill: section is one it does not know.
func checkRenderedConfig(t *testing.T, rendered string) {
	t.Helper()
	i := strings.Index(rendered, "drctl.yaml: |\n")
	if i < 0 {
		t.Fatal("no drctl.yaml in the rendered chart")
	}
	var body []string
	for _, l := range strings.Split(rendered[i+len("drctl.yaml: |\n"):], "\n") {
		if l != "" && !strings.HasPrefix(l, "    ") {
			break
		}
		body = append(body, strings.TrimPrefix(l, "    "))
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "drctl.yaml")
	os.WriteFile(cfg, []byte(strings.Join(body, "\n")), 0o600)
	bin := filepath.Join(dir, "drctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/drctl").CombinedOutput(); err != nil {
		t.Fatalf("build drctl: %v\n%s", err, out)
	}
	// The repository is a placeholder: list reads the whole file, then
	// stops at the repository's credentials (none here).
	cmd := exec.Command(bin, "--config", cfg, "list")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "AWS_EC2_METADATA_DISABLED=true"}
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "no usable AWS credentials") {
		t.Fatalf("drctl reading the chart's config: %s", out)
	}
}

// snippet is one key of the sidecar ConfigMap, as rendered.
func snippet(t *testing.T, rendered, key string) string {
	t.Helper()
	i := strings.Index(rendered, "  "+key+": |\n")
	if i < 0 {
		t.Fatalf("no %s in the sidecar ConfigMap", key)
	}
	var out []string
	for _, l := range strings.Split(rendered[i+len("  "+key+": |\n"):], "\n") {
		if l != "" && !strings.HasPrefix(l, "    ") {
			break
		}
		out = append(out, strings.TrimPrefix(l, "    "))
	}
	return strings.Join(out, "\n")
}

func indent(s string, n int) string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if l != "" {
			l = strings.Repeat(" ", n) + l
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n") + "\n"
}
