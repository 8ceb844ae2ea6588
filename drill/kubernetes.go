package drill

import (
	"crypto/sha256"
	"encoding/hex"
)

// KubernetesHelper is the program that runs kubernetes sandboxes.
const KubernetesHelper = "drctl-kube"

// KubernetesSettings is what drctl tells drctl-kube about a drill in a
// scratch namespace (the Settings of its Request). It carries secrets
// (Files), so it travels only on the helper's stdin.
type KubernetesSettings struct {
	// Kubeconfig and Context choose the cluster; both empty: in-cluster
	// (the pod's ServiceAccount), else $KUBECONFIG or ~/.kube/config.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	Context    string `json:"context,omitempty"`
	// Image runs the restore and the server: drctl's image (PostgreSQL 15
	// server and client programs, drctl).
	Image string `json:"image"`
	// Env is what drctl restore reads in the pod, none of it secret
	// (DRCTL_REPO, AWS_REGION, AWS_ENDPOINT_URL_S3...): file settings
	// point into the drill's Secret, mounted at SecretDir.
	Env map[string]string `json:"env"`
	// Files become the drill's Secret (the age identity, AWS credentials
	// in the shared-file format, allowed signers, a CA bundle): created
	// in the drill's namespace, deleted with it.
	Files map[string][]byte `json:"files"`
	// CPU, Memory and Storage bound the server's container (and the
	// namespace's quota): "2", "2Gi", "10Gi".
	CPU     string `json:"cpu"`
	Memory  string `json:"memory"`
	Storage string `json:"storage"`
	// EgressCIDRs and EgressPorts are the object store: the only
	// addresses, beside DNS, the drill's pods may reach.
	EgressCIDRs []string `json:"egress_cidrs"`
	EgressPorts []int    `json:"egress_ports"`
	// DrillRole, when set, is the ClusterRole (the chart's) that drctl
	// binds to ServiceAccount in each drill namespace it makes, before
	// it creates anything there: all it may do in drill namespaces.
	DrillRole      string `json:"drill_role,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"` // namespace/name
	// SocketDir is the private directory where drctl-kube serves the
	// drill's server on a Unix socket (drctl makes it, 0700).
	SocketDir string `json:"socket_dir"`
}

// Owner is the drctl.io/owner label of the drill namespaces drctl makes
// with serviceAccount (namespace/name; "" for none): the chart's admission
// policy lets a ServiceAccount act only in namespaces with its own, and
// the janitor deletes only those. The chart computes the same.
func Owner(serviceAccount string) string {
	if serviceAccount == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(serviceAccount))
	return hex.EncodeToString(sum[:])[:16]
}

// SecretDir is where a drill's Secret is mounted in its pods.
const SecretDir = "/etc/drctl-drill"
