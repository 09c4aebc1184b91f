{{/*
Chart name, possibly overridden.
*/}}
{{- define "gpuplace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: `<release>-<chart>`, or just the release name when it already
contains the chart name (release `gpuplace` -> `gpuplace`).
*/}}
{{- define "gpuplace.fullname" -}}
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

{{/*
The scheduler's Deployment, Service (the address the agents connect to) and friends:
`<fullname>-scheduler` — `gpuplace-scheduler` for a release named `gpuplace`, which is
`gpuplace render`'s default --scheduler-host.
*/}}
{{- define "gpuplace.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "gpuplace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpuplace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object of the release carries; "gpuplace.labels" adds the scheduler component.
*/}}
{{- define "gpuplace.commonLabels" -}}
helm.sh/chart: {{ include "gpuplace.chart" . }}
app.kubernetes.io/name: {{ include "gpuplace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: gpuplace
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gpuplace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpuplace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scheduler
{{- end }}

{{- define "gpuplace.labels" -}}
{{ include "gpuplace.commonLabels" . }}
app.kubernetes.io/component: scheduler
{{- end }}

{{- define "gpuplace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpuplace.scheduler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository:tag (tag defaults to appVersion), or repository@digest.
*/}}
{{- define "gpuplace.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
A number as the scheduler parses it: YAML numbers reach templates as float64, which print as
4.194304e+06; whole numbers are printed as integers, others (and strings) as they are.
*/}}
{{- define "gpuplace.number" -}}
{{- if kindIs "string" . }}
{{- . }}
{{- else if eq (float64 .) (floor .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
The state claim's name.
*/}}
{{- define "gpuplace.claimName" -}}
{{- default (printf "%s-state" (include "gpuplace.scheduler.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
In-cluster DNS name of the scheduler's Service (usable from any namespace).
*/}}
{{- define "gpuplace.scheduler.host" -}}
{{- printf "%s.%s.svc" (include "gpuplace.scheduler.fullname" .) .Release.Namespace }}
{{- end }}
