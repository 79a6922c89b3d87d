{{/* The namespace of every namespaced object. */}}
{{- define "pinsvc.namespace" -}}
{{ .Values.namespace.name | default .Release.Namespace }}
{{- end }}

{{/* The image: repository:tag, or repository@digest. */}}
{{- define "pinsvc.image" -}}
{{- with .Values.image -}}
{{- if .digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .digest) -}}
{{- fail (printf "image.digest %q: want sha256: and 64 lowercase hex digits" .digest) -}}
{{- end -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag | default $.Chart.AppVersion }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Labels of an object: app.kubernetes.io/name when given, part-of, commonLabels. */}}
{{- define "pinsvc.labels" -}}
{{- $labels := dict "app.kubernetes.io/part-of" "pinsvc" -}}
{{- with index . 1 }}{{ $_ := set $labels "app.kubernetes.io/name" . }}{{ end -}}
{{- toYaml (merge $labels (index . 0).Values.commonLabels) -}}
{{- end }}
