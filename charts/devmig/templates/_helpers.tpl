{{/* Names: <release>-devmig unless the release is called devmig, trimmed to 63. */}}
{{- define "devmig.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "devmig.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "devmig.controller" -}}{{ include "devmig.fullname" . | trunc 52 | trimSuffix "-" }}-controller{{- end -}}
{{- define "devmig.agent" -}}{{ include "devmig.fullname" . | trunc 57 | trimSuffix "-" }}-agent{{- end -}}
{{- define "devmig.holder" -}}{{ include "devmig.fullname" . | trunc 56 | trimSuffix "-" }}-holder{{- end -}}

{{- define "devmig.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "devmig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: devmig
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "devmig.selector" -}}
app.kubernetes.io/name: {{ include "devmig.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "devmig.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The agent's ServiceAccount as the API server names it in requests. */}}
{{- define "devmig.agentUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "devmig.agent" . }}
{{- end -}}

{{- define "devmig.validate" -}}
{{- if not (or .Values.agent.kernel.enabled .Values.agent.simulated.enabled) -}}
{{- fail "agent: set agent.kernel.enabled (real VFIO devices) or agent.simulated.enabled (to try devmig without hardware), or both" -}}
{{- end -}}
{{- end -}}

{{/* Privileged only to open /dev/vfio and /dev/iommu of real devices; restricted otherwise. */}}
{{- define "devmig.agentSecurity" -}}
{{- if .Values.agent.kernel.enabled -}}
privileged: true
runAsUser: 0
readOnlyRootFilesystem: true
{{- else -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
{{- end -}}

{{/* The agent reads the kubelet's PodResources API: with kernel devices, or when asked for simulated ones. */}}
{{- define "devmig.podResources" -}}
{{- if and .Values.agent.podResources.enabled (or .Values.agent.kernel.enabled .Values.agent.podResources.withSimulated) -}}
true
{{- end -}}
{{- end -}}

{{/* The agent's state (journal, simulated devices) on the node rather than in an emptyDir. */}}
{{- define "devmig.stateOnNode" -}}
{{- if or .Values.agent.kernel.enabled .Values.agent.simulated.onNode }}true{{ end -}}
{{- end -}}

{{- define "devmig.agentMounts" -}}
- name: config
  mountPath: /etc/devmig
  readOnly: true
- name: state
  mountPath: /var/lib/devmig
  {{- if include "devmig.stateOnNode" . }}
  # One directory per node: nodes that share a host (or a path on shared storage) keep theirs apart.
  subPathExpr: $(NODE_NAME)
  {{- end }}
{{- if .Values.agent.kernel.enabled }}
- name: dev
  mountPath: /dev
- name: sys
  mountPath: /sys
  readOnly: true
{{- end }}
{{- end -}}
