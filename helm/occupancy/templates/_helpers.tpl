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

{{/* Name of the Secret holding Triton's model-control key (OCC_TRITON_KEY). */}}
{{- define "occupancy.triton.keySecretName" -}}
{{- default (printf "%s-key" (include "occupancy.triton.fullname" .)) .Values.triton.restrictedKey.existingSecret }}
{{- end }}

{{/* The environment variable OCC_TRITON_KEY from that Secret, for the gateway and Triton containers. */}}
{{- define "occupancy.triton.keyEnv" -}}
- name: OCC_TRITON_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "occupancy.triton.keySecretName" . }}
      key: OCC_TRITON_KEY
{{- end }}

{{/*
A value for the gateway's checksum/secret annotation that changes when its API keys change and reveals
nothing about them: SHA-256 of a random salt and the keys. The salt lives in the gateway Secret's
annotation and is read back (lookup) on upgrades; on a first install, or where the cluster cannot be
read (helm template), the value is random.
*/}}
{{- define "occupancy.gateway.secretChecksum" -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "occupancy.gateway.fullname" .) }}
{{- $salt := dig "metadata" "annotations" "occupancy/checksum-salt" "" $live }}
{{- if $salt }}
{{- printf "%s:%s" $salt (join "," .Values.gateway.apiKeys) | sha256sum }}
{{- else }}
{{- randAlphaNum 64 | sha256sum }}
{{- end }}
{{- end }}

{{/* Triton's restriction: the protocols (occupancy/triton_access.py RESTRICTED_PROTOCOLS), header and key. */}}
{{- define "occupancy.triton.restricted" -}}
model-repository,model-config,shared-memory,statistics,trace,logging:occ-triton-key=$(OCC_TRITON_KEY)
{{- end }}
