{{/* vim: set filetype=mustache: */}}

{{- define "dispatcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: RELEASE-NAME, or RELEASE when it already contains NAME.
*/}}
{{- define "dispatcher.fullname" -}}
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

{{- define "dispatcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dispatcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dispatcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dispatcher.labels" -}}
helm.sh/chart: {{ include "dispatcher.chart" . }}
{{ include "dispatcher.selectorLabels" . }}
app.kubernetes.io/version: {{ include "dispatcher.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: dispatcher
app.kubernetes.io/part-of: webhook-dispatcher
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dispatcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dispatcher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dispatcher.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "dispatcher.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "dispatcher.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The dispatcher config as rendered into the ConfigMap: the values' `config`
with admin.listen set to the pod's admin port. Fails on literal secrets.
*/}}
{{- define "dispatcher.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- if .Values.api.enabled }}
{{- $api := dict "listen" (printf "%s:%d" (ternary "127.0.0.1" "0.0.0.0" .Values.api.loopbackOnly) (int .Values.api.port)) "tokens" (list "${DISPATCHER_API_TOKEN}") }}
{{- with .Values.api.allowedHosts }}{{ $_ := set $api "allowed_hosts" . }}{{ end }}
{{- $_ := set $config "api" $api }}
{{- end }}
{{- if .Values.encryptionKeys }}
{{- $keys := list }}
{{- range $i, $_ := .Values.encryptionKeys }}{{ $keys = append $keys (printf "${DISPATCHER_SECRETS_KEY_%d}" $i) }}{{ end }}
{{- $_ := set $config "secrets" (dict "encryption_keys" $keys) }}
{{- end }}
{{- $text := toYaml $config }}
{{- if contains "whsec_" $text }}
{{- fail "config: a literal whsec_ signing secret is in the config; put it in a Secret, list it in secretEnv and write ${NAME} in the config" }}
{{- end }}
{{- if regexMatch "hooks\\.slack\\.com/services/" $text }}
{{- fail "config: a Slack webhook URL is in the config; put it in a Secret, list it in secretEnv and write ${NAME} in the config" }}
{{- end }}
{{- $text }}
{{- end }}

{{/*
pipeline.shutdown_grace in whole seconds, rounded up. Accepts the duration
forms the chart's schema allows: numbers with ms, s, m or h, for example
25s, 500ms, 1m 30s.
*/}}
{{- define "dispatcher.shutdownGraceSeconds" -}}
{{- $grace := "25s" }}
{{- with .Values.config.pipeline }}{{ with .shutdown_grace }}{{ $grace = . }}{{ end }}{{ end }}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+ *(ms|s|m|h)" (toString $grace) -1 }}
{{- $n := int (regexFind "^[0-9]+" .) }}
{{- $unit := trim (regexFind "(ms|s|m|h)$" .) }}
{{- if eq $unit "ms" }}{{ $ms = add $ms $n }}
{{- else if eq $unit "s" }}{{ $ms = add $ms (mul $n 1000) }}
{{- else if eq $unit "m" }}{{ $ms = add $ms (mul $n 60000) }}
{{- else }}{{ $ms = add $ms (mul $n 3600000) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{- define "dispatcher.terminationGracePeriodSeconds" -}}
{{- $grace := int (include "dispatcher.shutdownGraceSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace (int .Values.shutdownMarginSeconds) }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if le $set $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.pipeline.shutdown_grace (%ds): the kubelet would kill the dispatcher mid-drain" $set $grace) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}
