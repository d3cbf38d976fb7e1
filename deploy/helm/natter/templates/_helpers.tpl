{{/* Names, labels and the list of services. */}}

{{- define "natter.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "natter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The services, in the order they start; each has a values section of its name. */}}
{{- define "natter.services" -}}
storage sync fanout desk gateway
{{- end -}}

{{/* Selector labels of one service: pass (list $ "name"). */}}
{{- define "natter.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: natter
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one service: pass (list $ "name"). */}}
{{- define "natter.labels" -}}
{{- $root := index . 0 -}}
{{ include "natter.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: natter
helm.sh/chart: {{ include "natter.chart" $root }}
{{- end -}}

{{- define "natter.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The settings file's path in every pod. */}}
{{- define "natter.configPath" -}}/etc/natter/natter.toml{{- end -}}

{{/* Pod-level hardening shared by the services, the migration and the test. */}}
{{- define "natter.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "natter.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The volumes every Natter pod mounts: settings (from the ConfigMap
named second) and secrets. Pass (list $ "configmap-name"). */}}
{{- define "natter.volumes" -}}
{{- $root := index . 0 -}}
- name: config
  configMap:
    name: {{ index . 1 }}
- name: auth
  secret:
    secretName: {{ $root.Values.auth.existingSecret }}
{{- if $root.Values.payments.stripe.enabled }}
- name: stripe
  secret:
    secretName: {{ $root.Values.payments.stripe.existingSecret }}
{{- end }}
{{- with $root.Values.natter.bus.tls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- with $root.Values.natter.bus.credentialsSecret }}
- name: nats-creds
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{- define "natter.volumeMounts" -}}
- name: config
  mountPath: /etc/natter
  readOnly: true
- name: auth
  mountPath: /etc/natter-auth
  readOnly: true
{{- if .Values.payments.stripe.enabled }}
- name: stripe
  mountPath: /etc/natter-stripe
  readOnly: true
{{- end }}
{{- if .Values.natter.bus.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/natter-nats-tls
  readOnly: true
{{- end }}
{{- if .Values.natter.bus.credentialsSecret }}
- name: nats-creds
  mountPath: /etc/natter-nats-creds
  readOnly: true
{{- end }}
{{- end -}}

{{/* The settings file every Natter process reads (deploy/natter.toml documents each key). */}}
{{- define "natter.settings" -}}
{{- $v := .Values.natter -}}
grace_period_seconds = {{ $v.gracePeriodSeconds }}
grpc_max_connection_age_seconds = {{ $v.grpcMaxConnectionAgeSeconds }}
log_format = {{ $v.logFormat | quote }}
metrics_addr = "0.0.0.0:{{ $v.metrics.port }}"

[bus]
nats_url = {{ $v.bus.natsUrl | quote }}
prefix = {{ $v.bus.prefix | quote }}
partitions = {{ $v.bus.partitions }}
replicas = {{ $v.bus.replicas }}
{{- if $v.bus.tls.existingSecret }}
tls_ca_file = "/etc/natter-nats-tls/ca.crt"
{{- if $v.bus.tls.clientAuth }}
tls_cert_file = "/etc/natter-nats-tls/tls.crt"
tls_key_file = "/etc/natter-nats-tls/tls.key"
{{- end }}
{{- end }}
{{- if $v.bus.credentialsSecret }}
credentials_file = "/etc/natter-nats-creds/nats.creds"
{{- end }}

[store]
cql_nodes = [{{ range $i, $n := $v.store.cqlNodes }}{{ if $i }}, {{ end }}{{ $n | quote }}{{ end }}]
keyspace = {{ $v.store.keyspace | quote }}
datacenter = {{ $v.store.datacenter | quote }}
replication_factor = {{ $v.store.replicationFactor }}

[auth]
{{- if .Values.auth.jwksKey }}
jwks_file = "/etc/natter-auth/{{ .Values.auth.jwksKey }}"
{{- else }}
hs256_secret_file = "/etc/natter-auth/{{ .Values.auth.hs256Key }}"
{{- end }}
issuer = {{ .Values.auth.issuer | quote }}
audience = {{ .Values.auth.audience | quote }}
max_token_lifetime_seconds = {{ .Values.auth.maxTokenLifetimeSeconds }}

[limits]
max_message_bytes = {{ $v.limits.maxMessageBytes }}
max_members = {{ $v.limits.maxMembers }}
max_page_size = {{ $v.limits.maxPageSize }}
big_room_members = {{ $v.limits.bigRoomMembers }}

[gateway]
grpc_addr = "0.0.0.0:{{ .Values.gateway.grpcPort }}"
http_addr = "0.0.0.0:{{ .Values.gateway.httpPort }}"

[storage]
grpc_addr = "0.0.0.0:{{ .Values.storage.grpcPort }}"

[sync]
grpc_addr = "0.0.0.0:{{ .Values.sync.grpcPort }}"

[fanout]
grpc_addr = "0.0.0.0:{{ .Values.fanout.grpcPort }}"

[desk]
grpc_addr = "0.0.0.0:{{ .Values.desk.grpcPort }}"
http_addr = "0.0.0.0:{{ .Values.desk.httpPort }}"
{{- with .Values.payments.stripe }}
{{- if .enabled }}

[desk.stripe]
api_key_file = "/etc/natter-stripe/{{ .apiKeyKey }}"
webhook_secrets_file = "/etc/natter-stripe/{{ .webhookSecretsKey }}"
success_url = {{ .successUrl | quote }}
cancel_url = {{ .cancelUrl | quote }}
{{- end }}
{{- end }}
{{- end -}}
