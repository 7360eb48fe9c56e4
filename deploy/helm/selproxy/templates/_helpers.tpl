{{/* Names and labels. */}}
{{- define "selproxy.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "selproxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "selproxy.rankerName" -}}
{{- printf "%s-ranker" (include "selproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "selproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "selproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "selproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- define "selproxy.rankerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "selproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ranker
{{- end -}}

{{- define "selproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The port of a HOST:PORT address. */}}
{{- define "selproxy.port" -}}
{{- splitList ":" (toString .) | last | int -}}
{{- end -}}

{{/*
The configuration file: .Values.config, plus the remote ranker when the
model tier is on.  Keys are flag names; values are written as TOML: strings
quoted (a JSON string is a valid TOML basic string), numbers and booleans as
they are, lists as inline arrays.  Tables are refused: no flag takes one.
*/}}
{{- define "selproxy.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.rankerTier.enabled -}}
{{- $_ := set $config "ranker" "remote" -}}
{{- $_ := set $config "url" (printf "http://%s:%d/rerank" (include "selproxy.rankerName" .) (int .Values.rankerTier.port)) -}}
{{- if .Values.rankerTier.remoteOptions -}}
{{- $_ := set $config "ranker-option" .Values.rankerTier.remoteOptions -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $config | sortAlpha }}
{{- $value := get $config $key }}
{{- if not (regexMatch "^[a-z][a-z0-9-]*$" $key) }}
{{- fail (printf "config key %q is not a selproxy flag name" $key) }}
{{- end }}
{{- if kindIs "map" $value }}
{{- fail (printf "config key %q: a table is not a flag value" $key) }}
{{- end }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end -}}

{{/* The admin listener's port, when config sets admin-listen; else empty. */}}
{{- define "selproxy.adminPort" -}}
{{- with (get .Values.config "admin-listen") -}}{{ include "selproxy.port" . }}{{- end -}}
{{- end -}}

{{/* preStop pause + shutdown-delay + shutdown-grace + 10 s, rounded up. */}}
{{- define "selproxy.minimumGracePeriod" -}}
{{- $delay := get .Values.config "shutdown-delay" | default 0 -}}
{{- $grace := get .Values.config "shutdown-grace" | default 0 -}}
{{- addf .Values.lifecycle.preStopSleepSeconds $delay $grace 10 | ceil | int -}}
{{- end -}}

{{- define "selproxy.terminationGracePeriod" -}}
{{- $minimum := include "selproxy.minimumGracePeriod" . | int -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (sub $minimum 10 | int) -}}
{{- fail (printf "terminationGracePeriodSeconds %v must be above preStop + shutdown-delay + shutdown-grace (%d s)" .Values.terminationGracePeriodSeconds (sub $minimum 10)) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds | int -}}
{{- else -}}
{{- $minimum -}}
{{- end -}}
{{- end -}}
