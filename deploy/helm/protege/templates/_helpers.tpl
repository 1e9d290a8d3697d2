{{/* Names, labels and shared pieces of the Protégé chart. */}}

{{- define "protege.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "protege.fullname" -}}
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

{{- define "protege.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "protege.labels" -}}
helm.sh/chart: {{ include "protege.chart" .ctx }}
{{ include "protege.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: protege
{{- end }}

{{- define "protege.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protege.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "protege.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "protege.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "protege.secretName" -}}
{{- default (printf "%s-secrets" (include "protege.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "protege.configName" -}}
{{- printf "%s-config" (include "protege.fullname" .) }}
{{- end }}

{{- define "protege.runsClaim" -}}
{{- default (printf "%s-runs" (include "protege.fullname" .)) .Values.runs.persistence.existingClaim }}
{{- end }}

{{/* image reference; call with (dict "image" .Values.image.gateway "ctx" $). */}}
{{- define "protege.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The student server every protege process talks to: vLLM, else the model server, else config. */}}
{{- define "protege.studentApiBase" -}}
{{- if .Values.vllm.enabled }}
{{- printf "http://%s-vllm:%d/v1" (include "protege.fullname" .) (int .Values.vllm.port) }}
{{- else if .Values.modelServer.enabled }}
{{- printf "http://%s-model-server:%d/v1" (include "protege.fullname" .) (int .Values.modelServer.port) }}
{{- else }}
{{- .Values.config.student_api_base | default "" }}
{{- end }}
{{- end }}

{{/* protege.yaml: .Values.config with host, port and student_api_base filled in. */}}
{{- define "protege.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "host" "0.0.0.0" }}
{{- $_ := set $config "port" (int .Values.gateway.port) }}
{{- $student := include "protege.studentApiBase" . }}
{{- if $student }}
{{- $_ := set $config "student_api_base" $student }}
{{- else }}
{{- $_ := unset $config "student_api_base" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The store URL must come from somewhere: a Secret we create (storeUrl) or an existing one. */}}
{{- define "protege.requireStore" -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.storeUrl) }}
{{- fail "secrets.storeUrl is required (postgresql://user:password@host:5432/db): gateway replicas, the distiller and the student server share state only through the store. Or set secrets.existingSecret to a Secret holding PROTEGE_STORE." }}
{{- end }}
{{- end }}

{{/* Gateway keys must come from somewhere too: the gateway binds 0.0.0.0 in its pod, where
authentication is required (auth.required) and it refuses to start without a key. */}}
{{- define "protege.requireKeys" -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.gatewayKeys) }}
{{- fail "secrets.gatewayKeys is required (comma-separated keys your apps send as Authorization: Bearer): the gateway accepts no client without one. Or set secrets.existingSecret to a Secret holding PROTEGE_GATEWAY_KEYS." }}
{{- end }}
{{- end }}

{{/* Volumes and mounts for the config file and the writable /tmp, shared by every pod. */}}
{{- define "protege.configVolume" -}}
- name: config
  configMap:
    name: {{ include "protege.configName" . }}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "protege.configMount" -}}
- name: config
  mountPath: /etc/protege
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "protege.runsVolume" -}}
- name: runs
{{- if .Values.runs.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "protege.runsClaim" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{/* Pod-level checksums: a change of config or secret rolls the pods. */}}
{{- define "protege.checksums" -}}
checksum/config: {{ include "protege.config" . | sha256sum }}
{{- if and .Values.secrets.create (not .Values.secrets.existingSecret) }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}
