{{/* Chart name. */}}
{{- define "kubefaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: <release>-kubefaas (or the release name when it already says kubefaas). */}}
{{- define "kubefaas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. Call with (dict "root" $ "component" "operator"). */}}
{{- define "kubefaas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubefaas.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kubefaas
{{- end }}

{{/* Labels that select one component's pods. Call with (dict "root" $ "component" "operator"). */}}
{{- define "kubefaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubefaas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* A platform image. Call with (dict "root" $ "image" .Values.operator.image). */}}
{{- define "kubefaas.image" -}}
{{- $repository := .image.repository }}
{{- with .root.Values.image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* Secret name and key of the PostgreSQL URL. */}}
{{- define "kubefaas.databaseSecret" -}}
{{- if .Values.postgresql.enabled }}
name: {{ include "kubefaas.fullname" . }}-postgresql
key: url
{{- else }}
name: {{ required "externalDatabase.existingSecret is required (or set postgresql.enabled)" .Values.externalDatabase.existingSecret }}
key: {{ required "externalDatabase.key is required" .Values.externalDatabase.key }}
{{- end }}
{{- end }}

{{/* Secret name and key of the Redis URL. */}}
{{- define "kubefaas.redisSecret" -}}
{{- if .Values.redis.enabled }}
name: {{ include "kubefaas.fullname" . }}-redis
key: url
{{- else }}
name: {{ required "externalRedis.existingSecret is required (or set redis.enabled)" .Values.externalRedis.existingSecret }}
key: {{ required "externalRedis.key is required" .Values.externalRedis.key }}
{{- end }}
{{- end }}

{{/* Environment every platform binary gets: the database, Redis, the queue prefix, logging, its pod name. */}}
{{/* The platform limits as flags, for the operator and the gateway (both validate specs). */}}
{{- define "kubefaas.limitArgs" -}}
{{- with .Values.limits }}
- --max-timeout-seconds={{ int64 .maxTimeoutSeconds }}
- --min-memory-mb={{ int64 .minMemoryMb }}
- --max-memory-mb={{ int64 .maxMemoryMb }}
- --min-cpu-millis={{ int64 .minCpuMillis }}
- --max-cpu-millis={{ int64 .maxCpuMillis }}
- --max-code-bytes={{ int64 .maxCodeBytes }}
- --max-env-bytes={{ int64 .maxEnvBytes }}
- --max-payload-bytes={{ int64 .maxPayloadBytes }}
- --max-header-bytes={{ int64 .maxHeaderBytes }}
{{- end }}
{{- end }}

{{- define "kubefaas.commonEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "kubefaas.databaseSecret" . | nindent 6 }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "kubefaas.redisSecret" . | nindent 6 }}
- name: KUBEFAAS_QUEUE_PREFIX
  value: {{ .Values.queuePrefix | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* The restricted pod security context (Pod Security Standards "restricted"). Call with (dict "user" 65532 "group" 65532). */}}
{{- define "kubefaas.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .user }}
runAsGroup: {{ .group }}
fsGroup: {{ .group }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted container security context. */}}
{{- define "kubefaas.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* HTTP probes of a platform binary on its port named "http". */}}
{{- define "kubefaas.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* A password kept across upgrades: the value given, else the one in the existing Secret, else a new random one. Call with (dict "root" $ "secret" NAME "value" VALUE). */}}
{{- define "kubefaas.password" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if .value }}
{{- .value }}
{{- else if and $existing $existing.data $existing.data.password }}
{{- $existing.data.password | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

{{/* Where a component's pods may run: its nodeSelector, tolerations and affinity. */}}
{{- define "kubefaas.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
