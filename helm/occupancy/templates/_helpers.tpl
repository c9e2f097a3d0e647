{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "occupancy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-based prefix of every object. */}}
{{- define "occupancy.fullname" -}}
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

{{- define "occupancy.gateway.fullname" -}}
{{- printf "%s-gateway" (include "occupancy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "occupancy.triton.fullname" -}}
{{- printf "%s-triton" (include "occupancy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "occupancy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "gateway"). */}}
{{- define "occupancy.labels" -}}
helm.sh/chart: {{ include "occupancy.chart" .root }}
{{ include "occupancy.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: occupancy
{{- end }}

{{/* Labels that select one component's pods; call with (dict "root" $ "component" "gateway"). */}}
{{- define "occupancy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "occupancy.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "occupancy.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{/* Name of the Secret holding OCC_API_KEYS, or empty when the gateway has no keys. */}}
{{- define "occupancy.gateway.secretName" -}}
{{- if .Values.gateway.existingSecret }}
{{- .Values.gateway.existingSecret }}
{{- else if .Values.gateway.apiKeys }}
{{- include "occupancy.gateway.fullname" . }}
{{- end }}
{{- end }}

{{/* Claim of the Triton model repository, or empty when it comes from object storage. */}}
{{- define "occupancy.triton.claimName" -}}
{{- if not .Values.triton.modelRepository.url }}
{{- default (printf "%s-models" (include "occupancy.triton.fullname" .)) .Values.triton.modelRepository.pvc.existingClaim }}
{{- end }}
{{- end }}
