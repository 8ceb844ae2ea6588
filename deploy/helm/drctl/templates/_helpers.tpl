{{- define "drctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "drctl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "drctl.labels" -}}
app.kubernetes.io/name: {{ include "drctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "drctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "drctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "drctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "drctl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "drctl.configMapName" -}}
{{- default (include "drctl.fullname" .) .Values.existingConfigMap -}}
{{- end -}}

{{/* The drill roles' names: cluster-scoped, so the release's namespace is in them. */}}
{{- define "drctl.drillScope" -}}
{{- printf "%s-%s" (include "drctl.fullname" .) .Release.Namespace | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "drctl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The daemon's container: the Deployment's, or the sidecar snippet's. */}}
{{- define "drctl.container" -}}
- name: drctl
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["daemon", "--config", "/etc/drctl/config/drctl.yaml", "--listen", ":{{ .Values.port }}", "--log-format", "json"]
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: TMPDIR
      value: /work
  {{- with .Values.secrets.env }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ .Values.port }}
      protocol: TCP
  startupProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 5
    failureThreshold: 60
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 20
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 20
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/drctl/config
      readOnly: true
    {{- if .Values.secrets.keys }}
    - name: keys
      mountPath: /etc/drctl/keys
      readOnly: true
    {{- end }}
    - name: work
      mountPath: /work
{{- end -}}

{{/* The volumes the container mounts. */}}
{{- define "drctl.volumes" -}}
- name: config
  configMap:
    name: {{ include "drctl.configMapName" . }}
{{- with .Values.secrets.keys }}
- name: keys
  secret:
    secretName: {{ . }}
    defaultMode: 0400
{{- end }}
- name: work
  emptyDir:
    sizeLimit: {{ .Values.workVolume.sizeLimit }}
{{- end -}}

{{/* The drctl.io/owner label of this release's drill namespaces: drill.Owner in Go. */}}
{{- define "drctl.drillOwner" -}}
{{- printf "%s/%s" .Release.Namespace (include "drctl.serviceAccountName" .) | sha256sum | trunc 16 -}}
{{- end -}}

{{/* The labels of the pods drctl runs in (the PodMonitor selects them). */}}
{{- define "drctl.runnerLabels" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- toYaml .Values.sidecar.podLabels -}}
{{- else -}}
{{- include "drctl.selectorLabels" . -}}
{{- end -}}
{{- end -}}
