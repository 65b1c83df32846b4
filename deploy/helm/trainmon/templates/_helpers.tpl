{{/* Names and labels ------------------------------------------------------------------------- */}}

{{- define "trainmon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-trainmon, or the release name alone when it already says trainmon. Kept to 50
characters: the Service <fullname>-dashboard must be a DNS label (63 at most). */}}
{{- define "trainmon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains (include "trainmon.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "trainmon.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "agent"). Never change these in
an upgrade: Deployments and DaemonSets cannot change their selector. */}}
{{- define "trainmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainmon.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "trainmon.labels" -}}
{{ include "trainmon.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trainmon
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "trainmon.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Config and credentials ---------------------------------------------------------------- */}}

{{/* Where each credential of values.credentials is mounted, which setting of trainmon.toml names
that file, and which components get it (least privilege: a pod mounts only what it uses).
`keda` is the KEDA Kafka scaler's auth parameter for the same material. */}}
{{- define "trainmon.credentialFiles" -}}
kafkaSaslPassword: {section: kafka, setting: sasl_password_file, path: kafka/sasl-password, keda: password, components: [agent, processors, setup]}
kafkaCa: {section: kafka, setting: ssl_ca_file, path: kafka/ca.crt, keda: ca, components: [agent, processors, setup]}
kafkaClientCert: {section: kafka, setting: ssl_cert_file, path: kafka/client.crt, keda: cert, components: [agent, processors, setup]}
kafkaClientKey: {section: kafka, setting: ssl_key_file, path: kafka/client.key, keda: key, components: [agent, processors, setup]}
clickhousePassword: {section: clickhouse, setting: password_file, path: clickhouse/password, components: [processors, setup]}
clickhouseCa: {section: clickhouse, setting: ca_file, path: clickhouse/ca.crt, components: [processors, setup, dashboard]}
clickhouseMigrationsPassword: {section: clickhouse, setting: migrations_password_file, path: clickhouse/migrations-password, components: [setup]}
dashboardClickhousePassword: {section: dashboard, setting: clickhouse_password_file, path: dashboard/clickhouse-password, components: [dashboard]}
dashboardAuth: {section: dashboard, setting: auth_file, path: dashboard/auth.toml, components: [dashboard]}
{{- end -}}

{{- define "trainmon.credentialsDir" -}}/etc/trainmon/credentials{{- end -}}

{{/* The credentials one component mounts, as YAML: name -> {secret, key, path, section, setting, keda}.
Only those the values fill in. The dashboard reads ClickHouse with [clickhouse] user and password
when [dashboard] clickhouse_user is set to "" (settings.dashboard_reader), so it gets that password
only then. `secret` is the existing Secret, else the chart's own (or its hook copy for setup). */}}
{{- define "trainmon.componentCredentials" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $readerUser := dig "dashboard" "clickhouse_user" "reader" ($root.Values.config | default dict) -}}
{{- $own := printf "%s-credentials" (include "trainmon.fullname" $root) -}}
{{- if eq $component "setup" -}}
{{- $own = printf "%s-setup-credentials" (include "trainmon.fullname" $root) -}}
{{- end -}}
{{- $out := dict -}}
{{- range $name, $file := include "trainmon.credentialFiles" $root | fromYaml -}}
{{- $value := get $root.Values.credentials $name | default dict -}}
{{- $components := $file.components -}}
{{- if and (eq $name "clickhousePassword") (eq $readerUser "") -}}
{{- $components = append $components "dashboard" -}}
{{- end -}}
{{- if and (has $component $components) (or $value.existingSecret $value.value) -}}
{{- $secret := $value.existingSecret | default $own -}}
{{- $key := ternary ($value.key | default "") $name (not (empty $value.existingSecret)) -}}
{{- if not $key -}}
{{- fail (printf "credentials.%s.key: name the key inside Secret %q that holds it" $name $value.existingSecret) -}}
{{- end -}}
{{- $_ := set $out $name (dict "secret" $secret "key" $key "path" $file.path "section" $file.section "setting" $file.setting "keda" ($file.keda | default "")) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* trainmon.toml of one component: values.config, plus the *_file settings of the credentials it
mounts; for the processors also [services] home on a writable emptyDir (their data folder; the root
filesystem is read-only). Credentials never go into values.config: a ConfigMap is readable
by anyone who may read the namespace's config. */}}
{{- define "trainmon.toml" -}}
{{- $root := .root -}}
{{- $config := deepCopy ($root.Values.config | default dict) -}}
{{- range $section, $table := $config -}}
{{- if not (kindIs "map" $table) -}}
{{- fail (printf "config.%s: expected a table of settings (see `trainmon config`)" $section) -}}
{{- end -}}
{{- range $key, $value := $table -}}
{{- if or (contains "password" $key) (hasSuffix "_file" $key) -}}
{{- fail (printf "config.%s.%s: credentials go in values.credentials (mounted from a Secret and named by the chart), never in config: it becomes a ConfigMap" $section $key) -}}
{{- end -}}
{{- if not (or (kindIs "string" $value) (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value)) -}}
{{- fail (printf "config.%s.%s: expected a string, number or true/false" $section $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .component "processors" -}}
{{- $services := get $config "services" | default dict -}}
{{- $_ := set $services "home" "/var/lib/trainmon" -}}
{{- $_ := set $config "services" $services -}}
{{- end -}}
{{- range $name, $cred := include "trainmon.componentCredentials" . | fromYaml -}}
{{- $table := get $config $cred.section | default dict -}}
{{- $_ := set $table $cred.setting (printf "%s/%s" (include "trainmon.credentialsDir" $root) $cred.path) -}}
{{- $_ := set $config $cred.section $table -}}
{{- end -}}
# trainmon.toml of the {{ .component }} ({{ include "trainmon.fullname" $root }}); made from the chart's values.config.
{{- range $section := keys $config | sortAlpha }}
[{{ $section }}]
{{- $table := get $config $section }}
{{- range $key := keys $table | sortAlpha }}
{{- /* JSON strings, numbers and booleans are valid TOML values (TOML takes \uXXXX escapes too) */}}
{{ $key }} = {{ get $table $key | toJson }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod pieces shared by every component ---------------------------------------------------- */}}

{{/* The config file, the credentials (one projected volume of only this component's items) and a
writable /tmp, as volumes. (dict "root" $ "component" "processors") */}}
{{- define "trainmon.volumes" -}}
- name: config
  configMap:
    name: {{ include "trainmon.configMapName" . }}
    items:
      - key: {{ .component }}.toml
        path: trainmon.toml
{{- $creds := include "trainmon.componentCredentials" . | fromYaml }}
{{- if $creds }}
- name: credentials
  projected:
    # Group-readable: the pod's fsGroup owns the files; nobody else in the container reads them.
    defaultMode: 0440
    sources:
      {{- range $name, $cred := $creds }}
      - secret:
          name: {{ $cred.secret }}
          items:
            - key: {{ $cred.key }}
              path: {{ $cred.path }}
      {{- end }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "trainmon.configMapName" -}}
{{- if eq .component "setup" -}}
{{ include "trainmon.fullname" .root }}-setup
{{- else -}}
{{ include "trainmon.fullname" .root }}-config
{{- end -}}
{{- end -}}

{{- define "trainmon.volumeMounts" -}}
- name: config
  mountPath: /etc/trainmon/trainmon.toml
  subPath: trainmon.toml
  readOnly: true
{{- if include "trainmon.componentCredentials" . | fromYaml }}
- name: credentials
  mountPath: {{ include "trainmon.credentialsDir" .root }}
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* TRAINMON_CONFIG rather than --config: the dashboard's Streamlit pages load the settings
themselves and read the same variable. HOME on the writable /tmp: Streamlit and other libraries
write dot-folders under it, and the root filesystem is read-only. */}}
{{- define "trainmon.env" -}}
- name: TRAINMON_CONFIG
  value: /etc/trainmon/trainmon.toml
- name: HOME
  value: /tmp
{{- end -}}

{{/* Restarts pods whose config or chart-made credentials changed (a subPath mount never sees an
update of its ConfigMap). */}}
{{- define "trainmon.checksums" -}}
checksum/config: {{ include "trainmon.toml" . | sha256sum }}
checksum/credentials: {{ toJson .root.Values.credentials | sha256sum }}
{{- end -}}

{{- define "trainmon.podCommon" -}}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Mistakes the schema of Kubernetes cannot see, refused at `helm install` with what to do. */}}
{{- define "trainmon.validate" -}}
{{- $known := include "trainmon.credentialFiles" . | fromYaml -}}
{{- range $name, $_ := .Values.credentials -}}
{{- if not (hasKey $known $name) -}}
{{- fail (printf "credentials.%s: unknown credential (known: %s)" $name (keys $known | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- $config := .Values.config | default dict -}}
{{- if not (dig "kafka" "bootstrap_servers" "" $config) -}}
{{- fail "config.kafka.bootstrap_servers: set your Kafka brokers (host:port,...); empty means 127.0.0.1 inside each pod" -}}
{{- end -}}
{{- if not (dig "clickhouse" "url" "" $config) -}}
{{- fail "config.clickhouse.url: set your ClickHouse HTTP(S) URL; empty means 127.0.0.1 inside each pod" -}}
{{- end -}}
{{- $protocol := dig "kafka" "security_protocol" "" $config | upper -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- if not (dig "kafka" "sasl_username" "" $config) -}}
{{- fail (printf "config.kafka.sasl_username: needed with security_protocol %s" $protocol) -}}
{{- end -}}
{{- if not (or .Values.credentials.kafkaSaslPassword.existingSecret .Values.credentials.kafkaSaslPassword.value) -}}
{{- fail (printf "credentials.kafkaSaslPassword: needed with security_protocol %s (existingSecret + key, or value)" $protocol) -}}
{{- end -}}
{{- end -}}
{{- if and (eq (dig "dashboard" "auth" "" $config) "oidc") (not (or .Values.credentials.dashboardAuth.existingSecret .Values.credentials.dashboardAuth.value)) -}}
{{- fail "config.dashboard.auth is oidc: give credentials.dashboardAuth, a TOML file with Streamlit's [auth] section" -}}
{{- end -}}
{{- end -}}
