{{/*
Checks across values that the schema cannot express. Included by the
Deployment, so every render runs them.
*/}}
{{- define "dispatcher.validate" -}}
{{- if and .Values.api.enabled (not .Values.api.tokenSecret.name) }}
{{- fail "api.enabled needs api.tokenSecret.name: the Secret (and key) holding the management API's bearer token" }}
{{- end }}
{{- if hasKey .Values.config "secrets" }}
{{- fail "config.secrets is set by the chart: list the Secrets of the encryption keys in encryptionKeys" }}
{{- end }}
{{- if hasKey .Values.config "api" }}
{{- fail "config.api is set by the chart: use the api values (api.enabled, api.tokenSecret, api.allowedHosts)" }}
{{- end }}
{{- if and .Values.api.enabled (eq (int .Values.api.port) (int .Values.metrics.port)) }}
{{- fail "api.port must differ from metrics.port" }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA creates its own HorizontalPodAutoscaler" }}
{{- end }}
{{- /* Every ${NAME} the config needs (no default) must reach the container. */}}
{{- if not (or .Values.envFrom .Values.existingConfigMap.name) }}
{{- $provided := dict }}
{{- range .Values.secretEnv }}{{ $_ := set $provided .name true }}{{ end }}
{{- range .Values.env }}{{ $_ := set $provided .name true }}{{ end }}
{{- $text := replace "$${" "" (toYaml .Values.config) }}
{{- range regexFindAll "\\$\\{[A-Za-z0-9_]+\\}" $text -1 }}
{{- $name := trimSuffix "}" (trimPrefix "${" .) }}
{{- if not (hasKey $provided $name) }}
{{- fail (printf "config refers to ${%s} but no secretEnv or env entry provides %s (the dispatcher would refuse to start)" $name $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
