// Package kube runs restore drills in scratch Kubernetes namespaces: a
// namespace per drill, fenced by a quota, a limit range and a network
// policy, holding one PostgreSQL pod into which drctl restore (an init
// container, or a Job for a dump) restores the backup, reached from the
// runner through a port-forward, and deleted whatever happens. It is
// linked only into drctl-kube, the helper drctl drill runs for
// --sandbox kubernetes.
package kube

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/drctl/drctl/drill"
	"github.com/drctl/drctl/policy"
)

// Labels every drill namespace carries (the chart's admission policy
// requires them).
const (
	LabelDrillID = "drctl.io/drill-id"
	LabelProcess = "drctl.io/process"
	LabelExpires = "drctl.io/expires" // Unix seconds
	LabelOwner   = "drctl.io/owner"   // drill.Owner of drctl's ServiceAccount
	labelRole    = "drctl.io/role"    // server, restore
	labelPSA     = "pod-security.kubernetes.io/enforce"
	// NamespacePrefix starts every drill namespace's name.
	NamespacePrefix = "drctl-drill-"
)

// Names of the objects in a drill namespace.
const (
	serverPod   = "postgres"
	restoreJob  = "restore"
	secretName  = "drctl-drill"
	fenceName   = "drctl-drill"
	pgPort      = 5432
	dataDir     = "/var/lib/postgresql/data"
	pgData      = dataDir + "/pgdata"
	socketDir   = "/run/postgresql"
	tmpDir      = "/tmp"
	postgresUID = 999 // the image's postgres user
)

// NamespaceName is drctl-drill-<process>-<first 8 of the drill id>, within
// the 63 characters of a DNS label.
func NamespaceName(process, drillID string) string {
	short := dnsLabel(drillID)
	if len(short) > 8 {
		short = short[:8]
	}
	p := dnsLabel(process)
	if room := 63 - len(NamespacePrefix) - 1 - len(short); len(p) > room {
		p = strings.TrimRight(p[:room], "-")
	}
	return NamespacePrefix + p + "-" + short
}

// dnsLabel lowercases s and turns what a DNS label cannot hold into '-'.
func dnsLabel(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b), "-")
	if out == "" {
		out = "x"
	}
	return out
}

// labelValue fits s into a label value: 63 characters of [A-Za-z0-9-_.],
// alphanumeric at both ends.
func labelValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	out := string(b)
	if len(out) > 63 {
		out = out[:63]
	}
	return strings.Trim(out, "-_.")
}

// plan is every object of one drill, built before any is created.
type plan struct {
	ns          *corev1.Namespace
	roleBinding *rbacv1.RoleBinding
	quota       *corev1.ResourceQuota
	limits      *corev1.LimitRange
	fence       *networkingv1.NetworkPolicy
	secret      *corev1.Secret
	pod         *corev1.Pod
	// job restores a dump into the pod's server; its PGHOST is the pod's
	// address, known once the pod runs.
	job func(podIP string) *batchv1.Job
}

// settings with defaults applied.
func withDefaults(s drill.KubernetesSettings) drill.KubernetesSettings {
	if s.CPU == "" {
		s.CPU = "2"
	}
	if s.Memory == "" {
		s.Memory = "2Gi"
	}
	if s.Storage == "" {
		s.Storage = "10Gi"
	}
	if len(s.EgressPorts) == 0 {
		s.EgressPorts = []int{443}
	}
	return s
}

// check refuses settings that would make a drill that cannot work or
// that is not fenced.
func check(s drill.KubernetesSettings) error {
	if s.Image == "" {
		return fmt.Errorf("kubernetes sandbox: no image (drctl's image, with PostgreSQL 15): set drill.kubernetes.image")
	}
	for _, q := range []struct{ name, v string }{{"cpu", s.CPU}, {"memory", s.Memory}, {"storage", s.Storage}} {
		if _, err := resource.ParseQuantity(q.v); err != nil {
			return fmt.Errorf("kubernetes sandbox: %s %q: %v", q.name, q.v, err)
		}
	}
	if len(s.EgressCIDRs) == 0 {
		return fmt.Errorf("kubernetes sandbox: no egress_cidrs: the object store's addresses are the only ones a drill may reach; give them")
	}
	for _, c := range s.EgressCIDRs {
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			return fmt.Errorf("kubernetes sandbox: egress_cidrs: %q: %v", c, err)
		}
		ones, bits := n.Mask.Size()
		if (bits == 32 && ones < 8) || (bits == 128 && ones < 16) {
			return fmt.Errorf("kubernetes sandbox: egress_cidrs: %s is most of the internet: give the object store's addresses", c)
		}
	}
	for k := range s.Files {
		if k == "" || strings.Trim(k, "abcdefghijklmnopqrstuvwxyz0123456789-._") != "" || k == "pg_hba.conf" || k == "pgpass" {
			return fmt.Errorf("kubernetes sandbox: file name %q: use lowercase letters, digits, '-', '.', '_' (pg_hba.conf and pgpass are the drill's)", k)
		}
	}
	return nil
}

// buildPlan makes the objects of a drill.
func buildPlan(s drill.KubernetesSettings, spec drill.Spec, user, password string) (*plan, error) {
	s = withDefaults(s)
	if err := check(s); err != nil {
		return nil, err
	}
	if spec.Mode != policy.ModeLogical && spec.Mode != policy.ModePITR {
		return nil, fmt.Errorf("kubernetes sandbox: unknown mode %q", spec.Mode)
	}
	ns := NamespaceName(spec.Process, spec.DrillID)
	common := map[string]string{"app.kubernetes.io/managed-by": "drctl", "app.kubernetes.io/name": "drctl-drill", LabelDrillID: labelValue(spec.DrillID)}
	meta := func(name string, extra map[string]string) metav1.ObjectMeta {
		l := map[string]string{}
		for k, v := range common {
			l[k] = v
		}
		for k, v := range extra {
			l[k] = v
		}
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: l}
	}
	p := &plan{}
	nsLabels := map[string]string{LabelProcess: labelValue(spec.Process), LabelExpires: strconv.FormatInt(spec.Expires.Unix(), 10), labelPSA: "restricted"}
	if owner := drill.Owner(s.ServiceAccount); owner != "" {
		nsLabels[LabelOwner] = owner
	}
	p.ns = &corev1.Namespace{ObjectMeta: meta(ns, nsLabels)}
	p.ns.Namespace = ""
	p.ns.Annotations = map[string]string{"drctl.io/backup-id": spec.BackupID, "drctl.io/expires-at": spec.Expires.UTC().Format(time.RFC3339)}

	if s.DrillRole != "" {
		saNS, saName, ok := strings.Cut(s.ServiceAccount, "/")
		if !ok || saNS == "" || saName == "" {
			return nil, fmt.Errorf("kubernetes sandbox: drill_role %s needs the ServiceAccount (namespace/name) to bind it to", s.DrillRole)
		}
		p.roleBinding = &rbacv1.RoleBinding{ObjectMeta: meta("drctl-drill", nil),
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: s.DrillRole},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: saName, Namespace: saNS}}}
	}

	cpu, mem, storage := resource.MustParse(s.CPU), resource.MustParse(s.Memory), resource.MustParse(s.Storage)
	twice := func(q resource.Quantity) resource.Quantity { q.Add(q); return q }
	// The container's ephemeral storage: the data's emptyDir (storage)
	// and a margin for logs and /tmp.
	room := storage.DeepCopy()
	room.Add(resource.MustParse("1Gi"))
	// The server's pod, and for a dump the restore Job's: at most two pods.
	p.quota = &corev1.ResourceQuota{ObjectMeta: meta(fenceName, nil), Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{
		corev1.ResourcePods:                     resource.MustParse("2"),
		corev1.ResourceLimitsCPU:                twice(cpu),
		corev1.ResourceLimitsMemory:             twice(mem),
		corev1.ResourceLimitsEphemeralStorage:   twice(room),
		corev1.ResourceRequestsCPU:              twice(cpu),
		corev1.ResourceRequestsMemory:           twice(mem),
		corev1.ResourceRequestsEphemeralStorage: twice(room),
		corev1.ResourceServices:                 resource.MustParse("0"),
		corev1.ResourcePersistentVolumeClaims:   resource.MustParse("0"),
	}}}
	limits := corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem, corev1.ResourceEphemeralStorage: room}
	small := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"), corev1.ResourceEphemeralStorage: resource.MustParse("64Mi")}
	p.limits = &corev1.LimitRange{ObjectMeta: meta(fenceName, nil), Spec: corev1.LimitRangeSpec{Limits: []corev1.LimitRangeItem{{
		Type: corev1.LimitTypeContainer, Max: limits, Default: small, DefaultRequest: small,
	}}}}

	p.fence = fence(meta(fenceName, nil), s, spec.Mode)

	files := map[string][]byte{}
	for k, v := range s.Files {
		files[k] = v
	}
	hba := "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nhost all all 0.0.0.0/0 reject\nhost all all ::/0 reject\n"
	if spec.Mode == policy.ModeLogical {
		// initdb sets the password; the restore Job logs in with it from
		// its own pod.
		hba = "local all all scram-sha-256\nhost all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n"
		files["pgpass"] = []byte(password + "\n")
		files["pgpassfile"] = []byte(fmt.Sprintf("*:*:*:%s:%s\n", passEscape(user), passEscape(password)))
	}
	files["pg_hba.conf"] = []byte(hba)
	p.secret = &corev1.Secret{ObjectMeta: meta(secretName, nil), Type: corev1.SecretTypeOpaque, Data: files}

	env := envList(s.Env)
	p.pod = serverPodSpec(meta(serverPod, map[string]string{labelRole: "server"}), s, spec, user, env, limits)
	if spec.Mode == policy.ModeLogical {
		p.job = func(podIP string) *batchv1.Job {
			return restoreJobSpec(meta(restoreJob, nil), common, s, spec, user, podIP, env, limits)
		}
	}
	return p, nil
}

// passEscape escapes a .pgpass field.
func passEscape(s string) string { return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(s) }

func envList(m map[string]string) []corev1.EnvVar {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := []corev1.EnvVar{{Name: "HOME", Value: tmpDir}, {Name: "TMPDIR", Value: tmpDir}}
	for _, k := range keys {
		out = append(out, corev1.EnvVar{Name: k, Value: m[k]})
	}
	return out
}

// restricted is the container security context the restricted pod
// security standard asks for, read-only root filesystem too.
func restricted() *corev1.SecurityContext {
	f, t := false, true
	return &corev1.SecurityContext{AllowPrivilegeEscalation: &f, ReadOnlyRootFilesystem: &t, RunAsNonRoot: &t,
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
}

func podSecurity() *corev1.PodSecurityContext {
	uid, t := int64(postgresUID), true
	return &corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &uid, FSGroup: &uid, RunAsNonRoot: &t,
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
}

func secretVolume() corev1.Volume {
	mode := int32(0o440) // root-owned, the postgres group's (fsGroup)
	return corev1.Volume{Name: "drill", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secretName, DefaultMode: &mode}}}
}

func emptyDir(name string, limit *resource.Quantity) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: limit}}}
}

// serverPodSpec is the PostgreSQL pod. For a base backup its init
// container is drctl restore --to, and the server replays the archive
// (restore_command is drctl wal-fetch, from the same image); for a dump
// it is initdb, and a Job restores into the running server.
func serverPodSpec(meta metav1.ObjectMeta, s drill.KubernetesSettings, spec drill.Spec, user string, env []corev1.EnvVar, limits corev1.ResourceList) *corev1.Pod {
	f := false
	storage := resource.MustParse(s.Storage)
	mounts := []corev1.VolumeMount{
		{Name: "data", MountPath: dataDir}, {Name: "run", MountPath: socketDir}, {Name: "tmp", MountPath: tmpDir},
		{Name: "drill", MountPath: drill.SecretDir, ReadOnly: true},
	}
	resources := corev1.ResourceRequirements{Limits: limits, Requests: limits}
	// ssl off: production's ssl = on names certificate files the pod
	// does not have (the forward is drctl's own, the Job's traffic stays
	// in the namespace's fence).
	settings := []string{"postgres", "-D", pgData, "-c", "port=" + strconv.Itoa(pgPort), "-c", "unix_socket_directories=" + socketDir,
		"-c", "hba_file=" + drill.SecretDir + "/pg_hba.conf", "-c", "fsync=off", "-c", "logging_collector=off", "-c", "ssl=off"}
	var init corev1.Container
	if spec.Mode == policy.ModePITR {
		// Replay without hot standby (it would demand production's
		// max_connections and friends); production's memory settings
		// stay in production. Only the pod itself (a port-forward
		// arrives on its loopback) may connect.
		settings = append(settings, "-c", "listen_addresses=127.0.0.1", "-c", "hot_standby=off", "-c", "shared_buffers=128MB", "-c", "huge_pages=off")
		init = corev1.Container{Name: "restore", Image: s.Image, Command: []string{"drctl", "restore", spec.BackupID, "--to", pgData},
			Env: env, VolumeMounts: mounts, SecurityContext: restricted(), Resources: resources}
	} else {
		settings = append(settings, "-c", "listen_addresses=*", "-c", "max_connections=20")
		init = corev1.Container{Name: "initdb", Image: s.Image,
			Command: []string{"initdb", "-D", pgData, "-U", user, "--pwfile=" + drill.SecretDir + "/pgpass", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"},
			Env:     env, VolumeMounts: mounts, SecurityContext: restricted(), Resources: resources}
	}
	server := corev1.Container{Name: "postgres", Image: s.Image, Command: settings, Env: env, VolumeMounts: mounts,
		Ports:           []corev1.ContainerPort{{Name: "postgres", ContainerPort: pgPort, Protocol: corev1.ProtocolTCP}},
		SecurityContext: restricted(), Resources: resources,
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
			Command: []string{"pg_isready", "-q", "-h", socketDir, "-p", strconv.Itoa(pgPort)}}}, PeriodSeconds: 2, FailureThreshold: 1},
	}
	volumes := []corev1.Volume{emptyDir("data", &storage), emptyDir("run", nil), emptyDir("tmp", nil), secretVolume()}
	if spec.Mode == policy.ModeLogical {
		// The server of a dump reads only its pg_hba.conf: the keys to the
		// repository stay with initdb and the restore Job.
		mode := int32(0o440)
		volumes = append(volumes, corev1.Volume{Name: "server", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secretName, DefaultMode: &mode, Items: []corev1.KeyToPath{{Key: "pg_hba.conf", Path: "pg_hba.conf"}}}}})
		server.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: dataDir}, {Name: "run", MountPath: socketDir},
			{Name: "tmp", MountPath: tmpDir}, {Name: "server", MountPath: drill.SecretDir, ReadOnly: true}}
		server.Env = []corev1.EnvVar{{Name: "HOME", Value: tmpDir}, {Name: "TMPDIR", Value: tmpDir}}
	}
	grace := int64(5)
	// The kubelet stops it at the drill's expiry, whatever the runner does.
	deadline := int64(max(60, int(time.Until(spec.Expires).Seconds())))
	return &corev1.Pod{ObjectMeta: meta, Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: &f, EnableServiceLinks: &f,
		TerminationGracePeriodSeconds: &grace, SecurityContext: podSecurity(), ActiveDeadlineSeconds: &deadline,
		InitContainers: []corev1.Container{init}, Containers: []corev1.Container{server}, Volumes: volumes,
	}}
}

// restoreJobSpec is the Job that restores a dump into the server's pod.
// libpq ignores a password file others may read, and the Secret's files
// are the postgres group's: the script copies it, private, first.
func restoreJobSpec(meta metav1.ObjectMeta, common map[string]string, s drill.KubernetesSettings, spec drill.Spec, user, podIP string, env []corev1.EnvVar, limits corev1.ResourceList) *batchv1.Job {
	f := false
	zero := int32(0)
	env = append(append([]corev1.EnvVar{}, env...),
		corev1.EnvVar{Name: "PGHOST", Value: podIP}, corev1.EnvVar{Name: "PGPORT", Value: strconv.Itoa(pgPort)},
		corev1.EnvVar{Name: "PGUSER", Value: user}, corev1.EnvVar{Name: "PGDATABASE", Value: spec.Database},
		corev1.EnvVar{Name: "PGSSLMODE", Value: "disable"}, corev1.EnvVar{Name: "PGPASSFILE", Value: tmpDir + "/pgpass"})
	labels := map[string]string{labelRole: "restore"}
	for k, v := range common {
		labels[k] = v
	}
	deadline := int64(max(60, int(time.Until(spec.Expires).Seconds())))
	return &batchv1.Job{ObjectMeta: meta, Spec: batchv1.JobSpec{BackoffLimit: &zero, ActiveDeadlineSeconds: &deadline,
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: &f, EnableServiceLinks: &f, SecurityContext: podSecurity(),
			Containers: []corev1.Container{{Name: "restore", Image: s.Image,
				Command: []string{"/bin/sh", "-c", `umask 077 && cp "$0" "$PGPASSFILE" && exec drctl restore "$1" --into ''`, drill.SecretDir + "/pgpassfile", spec.BackupID},
				Env:     env, SecurityContext: restricted(), Resources: corev1.ResourceRequirements{
					// drctl restore and pg_restore: the server's CPU and
					// memory at most, little disk (it streams).
					Limits: corev1.ResourceList{corev1.ResourceCPU: limits[corev1.ResourceCPU], corev1.ResourceMemory: limits[corev1.ResourceMemory],
						corev1.ResourceEphemeralStorage: resource.MustParse("1Gi")},
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("256Mi"),
						corev1.ResourceEphemeralStorage: resource.MustParse("256Mi")}},
				VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: tmpDir}, {Name: "drill", MountPath: drill.SecretDir, ReadOnly: true}}}},
			Volumes: []corev1.Volume{emptyDir("tmp", nil), secretVolume()},
		}},
	}}
}

// fence is the drill's NetworkPolicy: every pod of the namespace denied
// all ingress (but, for a dump, the restore Job's to the server), all
// egress but the cluster's DNS and the object store (and the Job's to the
// server).
func fence(meta metav1.ObjectMeta, s drill.KubernetesSettings, mode string) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p int, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(int32(p))
		return networkingv1.NetworkPolicyPort{Protocol: proto, Port: &v}
	}
	server := &metav1.LabelSelector{MatchLabels: map[string]string{labelRole: "server"}}
	restore := &metav1.LabelSelector{MatchLabels: map[string]string{labelRole: "restore"}}
	// No ingress but the restore Job's (for a dump): drctl reaches the
	// server by port-forward, which enters the pod from inside, not
	// through the pod network.
	var ingress []networkingv1.NetworkPolicyIngressRule
	var store []networkingv1.NetworkPolicyPeer
	for _, c := range s.EgressCIDRs {
		store = append(store, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: c}})
	}
	var storePorts []networkingv1.NetworkPolicyPort
	for _, p := range s.EgressPorts {
		storePorts = append(storePorts, port(p, &tcp))
	}
	egress := []networkingv1.NetworkPolicyEgressRule{
		// The cluster's DNS in kube-system only: any tenant may label a
		// pod of its own k8s-app=kube-dns.
		{To: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}}}},
			Ports: []networkingv1.NetworkPolicyPort{port(53, &udp), port(53, &tcp)}},
		{To: store, Ports: storePorts},
	}
	if mode == policy.ModeLogical {
		ingress = append(ingress, networkingv1.NetworkPolicyIngressRule{
			From: []networkingv1.NetworkPolicyPeer{{PodSelector: restore}}, Ports: []networkingv1.NetworkPolicyPort{port(pgPort, &tcp)}})
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{{PodSelector: server}}, Ports: []networkingv1.NetworkPolicyPort{port(pgPort, &tcp)}})
	}
	return &networkingv1.NetworkPolicy{ObjectMeta: meta, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		Ingress:     ingress, Egress: egress,
	}}
}
