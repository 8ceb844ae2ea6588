package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/drctl/drctl/drill"
)

// drillConfig is the config file's drill: section.
type drillConfig struct {
	// Sandbox is where drills restore: local (default) or kubernetes.
	Sandbox    string           `yaml:"sandbox,omitempty"`
	Kubernetes kubernetesConfig `yaml:"kubernetes,omitempty"`
}

// kubernetesConfig sets up drills in scratch namespaces (drctl-kube).
type kubernetesConfig struct {
	Kubeconfig     string   `yaml:"kubeconfig,omitempty"`
	Context        string   `yaml:"context,omitempty"`
	Image          string   `yaml:"image,omitempty"`
	CPU            string   `yaml:"cpu,omitempty"`
	Memory         string   `yaml:"memory,omitempty"`
	Storage        string   `yaml:"storage,omitempty"`
	EgressCIDRs    []string `yaml:"egress_cidrs,omitempty"`
	EgressPorts    []int    `yaml:"egress_ports,omitempty"`
	DrillRole      string   `yaml:"drill_role,omitempty"`
	ServiceAccount string   `yaml:"service_account,omitempty"`
	// AWSCredentialsFile, an AWS shared-credentials file, replaces
	// drctl's own keys in the drill's Secret: give one that can only read.
	AWSCredentialsFile string `yaml:"aws_credentials_file,omitempty"`
}

// kubernetesSandbox is the drill sandbox drctl-kube runs: a scratch
// namespace whose pod restores from the repository with the settings and
// keys given here (copied into a Secret of the namespace, deleted with it).
func (s *settings) kubernetesSandbox(kubeconfig string) (*drill.Remote, error) {
	helper, err := drill.HelperPath(drill.KubernetesHelper)
	if err != nil {
		return nil, err
	}
	k := s.drill.Kubernetes
	if !strings.HasPrefix(s.Repo, "s3://") {
		return nil, fmt.Errorf("the kubernetes sandbox restores in the cluster, from an S3 repository: %q is not one", s.Repo)
	}
	o, err := s.storeOptions()
	if err != nil {
		return nil, err
	}
	c := o.S3Client
	set := drill.KubernetesSettings{Kubeconfig: first(kubeconfig, k.Kubeconfig), Context: k.Context, Image: k.Image,
		CPU: k.CPU, Memory: k.Memory, Storage: k.Storage, EgressCIDRs: k.EgressCIDRs, EgressPorts: k.EgressPorts,
		DrillRole: k.DrillRole, ServiceAccount: k.ServiceAccount,
		Env: map[string]string{"DRCTL_REPO": s.Repo, "AWS_EC2_METADATA_DISABLED": "true"}, Files: map[string][]byte{}}
	file := func(name, env string, data []byte) {
		set.Files[name] = data
		set.Env[env] = drill.SecretDir + "/" + name
	}
	read := func(what, path string) ([]byte, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("kubernetes sandbox: %s: %w", what, err)
		}
		return data, nil
	}
	if c.Region != "" {
		set.Env["AWS_REGION"] = c.Region
	}
	if c.Endpoint != "" {
		set.Env["AWS_ENDPOINT_URL_S3"] = c.Endpoint
	}
	if c.ForcePathStyle {
		set.Env["DRCTL_S3_FORCE_PATH_STYLE"] = "true"
	}
	if c.CABundle != "" {
		data, err := read("CA bundle", c.CABundle)
		if err != nil {
			return nil, err
		}
		file("ca-bundle.pem", "AWS_CA_BUNDLE", data)
	}
	switch {
	case k.AWSCredentialsFile != "":
		data, err := read("aws_credentials_file", k.AWSCredentialsFile)
		if err != nil {
			return nil, err
		}
		file("aws-credentials", "AWS_SHARED_CREDENTIALS_FILE", data)
	case c.AccessKeyID != "":
		creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", c.AccessKeyID, c.SecretAccessKey)
		if c.SessionToken != "" {
			creds += "aws_session_token = " + c.SessionToken + "\n"
		}
		file("aws-credentials", "AWS_SHARED_CREDENTIALS_FILE", []byte(creds))
	default:
		return nil, fmt.Errorf("the kubernetes sandbox copies S3 credentials into the drill's namespace: give drill.kubernetes.aws_credentials_file (read-only keys), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (profiles and workload identity are not passed on)")
	}
	switch {
	case s.IdentityFile != "":
		data, err := read("age identity", s.IdentityFile)
		if err != nil {
			return nil, err
		}
		file("age-identity", "DRCTL_AGE_IDENTITY_FILE", data)
	case s.Identity != "":
		file("age-identity", "DRCTL_AGE_IDENTITY_FILE", []byte(s.Identity))
	}
	switch {
	case s.AllowedSignersFile != "":
		data, err := read("allowed signers", s.AllowedSignersFile)
		if err != nil {
			return nil, err
		}
		file("allowed-signers", "DRCTL_ALLOWED_SIGNERS_FILE", data)
	case s.AllowedSigners != "":
		file("allowed-signers", "DRCTL_ALLOWED_SIGNERS_FILE", []byte(s.AllowedSigners))
	}
	// The drill's server is served here on a Unix socket in a directory
	// of drctl's user alone (a restored base backup's server trusts what
	// reaches it).
	root := drill.Root()
	if len(root)+len("/kube-0123456789/.s.PGSQL.5432") > 100 {
		// A socket's path holds 108 bytes: a long TMPDIR gets /tmp.
		root = fmt.Sprintf("/tmp/drctl-drills-%d", os.Geteuid())
	}
	if err := drill.PrivateRoot(root); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(root, "kube-")
	if err != nil {
		return nil, err
	}
	set.SocketDir = dir
	return &drill.Remote{Program: helper, Args: []string{"sandbox"}, Env: s.helperEnv(), Settings: set, KindName: "kubernetes",
		Logger: s.Logger, CloseTimeout: 6 * time.Minute, Cleanup: func() { os.RemoveAll(dir) }}, nil
}

// helperEnv is drctl-kube's environment: what locates the cluster (and
// the test hook), none of drctl's repository secrets.
func (s *settings) helperEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "PG") || (strings.HasPrefix(k, "DRCTL_") && k != "DRCTL_KUBE_TEST_ADDRESS_ANNOTATION") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
