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
