{{/* Chart name, truncated to a DNS label. */}}
{{- define "agentfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, unless it already contains the chart name. */}}
{{- define "agentfleet.fullname" -}}
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

{{- define "agentfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. Not app.kubernetes.io/managed-by=agentfleet:
that label marks what the operator itself creates. */}}
{{- define "agentfleet.labels" -}}
helm.sh/chart: {{ include "agentfleet.chart" . }}
{{ include "agentfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentfleet
{{- end }}

{{- define "agentfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agentfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "agentfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "agentfleet.guardImage" -}}
{{- default (include "agentfleet.image" .) .Values.guardImage }}
{{- end }}

{{- define "agentfleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "agentfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The chart's Redis (ledger.install): its name and the labels that select its pod. */}}
{{- define "agentfleet.ledgerName" -}}
{{- printf "%s-ledger" (include "agentfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentfleet.ledgerSelectorLabels" -}}
{{ include "agentfleet.selectorLabels" . }}
app.kubernetes.io/component: ledger
{{- end }}

{{/* The Secret the chart's Redis reads its password from (in the release namespace). */}}
{{- define "agentfleet.ledgerServerSecret" -}}
{{- default .Values.ledger.passwordSecret .Values.ledger.redis.existingSecret }}
{{- end }}

{{- define "agentfleet.ledgerImage" -}}
{{- $image := .Values.ledger.redis.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}
{{- end }}

{{/* The ledger section of the operator's platform file (api.ledger.PlatformLedger), or nothing. */}}
{{- define "agentfleet.platformLedger" -}}
{{- $l := .Values.ledger }}
{{- if $l.install }}
{{- $ledger := dict "url" (printf "redis://%s.%s.svc:6379/0" (include "agentfleet.ledgerName" .) .Release.Namespace) "pods" (dict "namespace" .Release.Namespace "labels" (include "agentfleet.ledgerSelectorLabels" . | fromYaml)) }}
{{- if $l.passwordSecret }}{{ $_ := set $ledger "passwordSecret" $l.passwordSecret }}{{ end }}
{{- $_ := set $ledger "passwordKey" $l.passwordKey }}
{{- $_ := set $ledger "timeout" $l.timeout }}
{{- $_ := set $ledger "maxConnections" $l.maxConnections }}
{{- $_ := set $ledger "keyPrefix" $l.keyPrefix }}
{{- toJson $ledger }}
{{- else if $l.url }}
{{- $ledger := dict "url" $l.url "passwordKey" $l.passwordKey "timeout" $l.timeout "maxConnections" $l.maxConnections "keyPrefix" $l.keyPrefix }}
{{- if $l.passwordSecret }}{{ $_ := set $ledger "passwordSecret" $l.passwordSecret }}{{ end }}
{{- if $l.pods }}{{ $_ := set $ledger "pods" $l.pods }}{{ end }}
{{- if $l.cidrs }}{{ $_ := set $ledger "cidrs" $l.cidrs }}{{ end }}
{{- toJson $ledger }}
{{- end }}
{{- end }}
