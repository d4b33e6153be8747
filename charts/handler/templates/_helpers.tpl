{{/* The handler's name: its Deployment, Service and Handler resource. */}}
{{- define "handler.name" -}}
{{- .Values.nameOverride | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "handler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "handler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: schedulezero
app.kubernetes.io/component: handler
{{- end -}}

{{- define "handler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "handler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "handler.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Where `packages` are installed; the image's virtualenv has a .pth file naming it. */}}
{{- define "handler.packagesDir" -}}/opt/schedulezero/packages{{- end -}}

{{/* The restricted Pod Security profile, for each container. */}}
{{- define "handler.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
