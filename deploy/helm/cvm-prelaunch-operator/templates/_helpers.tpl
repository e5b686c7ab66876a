{{/* The chart's name (nameOverride wins). */}}
{{- define "cvm-prelaunch-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it already contains the chart's name. */}}
{{- define "cvm-prelaunch-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels: the pair Kustomize's install selects by, and the release. Never changed after an install. */}}
{{- define "cvm-prelaunch-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cvm-prelaunch-operator.name" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "cvm-prelaunch-operator.labels" -}}
app.kubernetes.io/name: {{ include "cvm-prelaunch-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: cvm-prelaunch-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cvm-prelaunch-operator.serviceAccountName" -}}
{{- default (include "cvm-prelaunch-operator.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "cvm-prelaunch-operator.leaseName" -}}
{{- default (include "cvm-prelaunch-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* repository@digest, or repository:tag (the chart's appVersion by default). */}}
{{- define "cvm-prelaunch-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's permissions: the same list as deploy/rbac/rules/cluster-role.yaml (tests/deploy/
test_helm.py keeps the two equal). Secrets are listed and watched metadata-only, values read by GET.
*/}}
{{- define "cvm-prelaunch-operator.rules" -}}
- apiGroups: [cloud.phala.com]
  resources: [cvmprelaunchscripts]
  verbs: [get, list, watch]
- apiGroups: [cloud.phala.com]
  resources: [cvmprelaunchscripts/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
