package kube

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/policy"
)

// Namespace names are DNS labels whatever the process is called.
func TestNamespaceName(t *testing.T) {
	for _, c := range []struct{ process, id, want string }{
		{"pos-sync", "9747eb35c0ffee00", "drctl-drill-pos-sync-9747eb35"},
		{"Finance_Posting!", "ABCDEF0123", "drctl-drill-finance-posting-abcdef01"},
		{strings.Repeat("inventory", 10), "0123456789", ""},
	} {
		got := NamespaceName(c.process, c.id)
		if len(got) > 63 || strings.Trim(got, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasSuffix(got, "-") {
			t.Fatalf("NamespaceName(%q) = %q: not a DNS label", c.process, got)
		}
		if c.want != "" && got != c.want {
			t.Fatalf("NamespaceName(%q) = %q, want %q", c.process, got, c.want)
		}
	}
}

func settings() drill.KubernetesSettings {
	return drill.KubernetesSettings{Image: "drctl:test", EgressCIDRs: []string{"10.20.0.0/16"},
		Env:   map[string]string{"DRCTL_REPO": "s3://b/p", "DRCTL_AGE_IDENTITY_FILE": drill.SecretDir + "/age-identity"},
		Files: map[string][]byte{"age-identity": []byte("AGE-SECRET-KEY-1SECRET")}, ServiceAccount: "erp/db-drctl", DrillRole: "db-drctl-erp-drill"}
}

// Settings that would leave a drill unfenced, or that cannot work, are
// refused before anything is made.
func TestPlanRefuses(t *testing.T) {
	spec := drill.Spec{DrillID: "d1", Process: "pos", Mode: policy.ModePITR, BackupID: "20261127T000000Z-abcdef", Expires: time.Now().Add(time.Hour)}
	for _, c := range []struct {
		what string
		edit func(*drill.KubernetesSettings)
		want string
	}{
		{"no image", func(s *drill.KubernetesSettings) { s.Image = "" }, "no image"},
		{"no egress", func(s *drill.KubernetesSettings) { s.EgressCIDRs = nil }, "no egress_cidrs"},
		{"the internet", func(s *drill.KubernetesSettings) { s.EgressCIDRs = []string{"0.0.0.0/0"} }, "most of the internet"},
		{"a /4", func(s *drill.KubernetesSettings) { s.EgressCIDRs = []string{"16.0.0.0/4"} }, "most of the internet"},
		{"not a CIDR", func(s *drill.KubernetesSettings) { s.EgressCIDRs = []string{"s3.amazonaws.com"} }, "egress_cidrs"},
		{"a bad quantity", func(s *drill.KubernetesSettings) { s.Memory = "lots" }, "memory"},
		{"a file named like the drill's", func(s *drill.KubernetesSettings) { s.Files["pg_hba.conf"] = nil }, "pg_hba.conf"},
		{"a role without its account", func(s *drill.KubernetesSettings) { s.ServiceAccount = "" }, "needs the ServiceAccount"},
	} {
		s := settings()
		c.edit(&s)
		if _, err := buildPlan(s, spec, "postgres", "pw"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.what, err, c.want)
		}
	}
}

// A base backup's pod: drctl restore in the init container, the owner
// label, the deadline, nothing secret in any argument or variable.
func TestPlanPITR(t *testing.T) {
	spec := drill.Spec{DrillID: "0123456789abcdef", Process: "pos-sync", Mode: policy.ModePITR, BackupID: "20261127T000000Z-abcdef", Expires: time.Now().Add(time.Hour)}
	p, err := buildPlan(settings(), spec, "postgres", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if p.ns.Labels[LabelOwner] != drill.Owner("erp/db-drctl") || p.ns.Labels[LabelOwner] == "" || p.roleBinding == nil || p.job != nil {
		t.Fatalf("namespace %v, rolebinding %v, job %v", p.ns.Labels, p.roleBinding, p.job != nil)
	}
	init := p.pod.Spec.InitContainers[0]
	if strings.Join(init.Command, " ") != "drctl restore 20261127T000000Z-abcdef --to "+pgData {
		t.Fatalf("init container: %v", init.Command)
	}
	if d := p.pod.Spec.ActiveDeadlineSeconds; d == nil || *d < 3500 {
		t.Fatalf("deadline %v", d)
	}
	for _, ct := range append(p.pod.Spec.InitContainers, p.pod.Spec.Containers...) {
		for _, w := range append(append([]string{}, ct.Command...), envValues(ct.Env)...) {
			if strings.Contains(w, "AGE-SECRET-KEY") {
				t.Fatalf("container %s carries the identity: %q", ct.Name, w)
			}
		}
	}
	if len(p.fence.Spec.Ingress) != 0 {
		t.Fatalf("a pitr drill's fence lets in: %+v", p.fence.Spec.Ingress)
	}
}

func envValues(env []corev1.EnvVar) []string {
	var out []string
	for _, e := range env {
		out = append(out, e.Value)
	}
	return out
}
