{{- define "sca.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sca.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sca.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sca.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sca.labels" -}}
{{ include "sca.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The cluster name prefix: a DNS label short enough for <prefix>-<ordinal>-NNNNN. */}}
{{- define "sca.prefix" -}}
{{- .Values.clusterPrefix | default .Release.Name -}}
{{- end -}}

{{- define "sca.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "sca.rancherSecret" -}}
{{- .Values.rancher.existingSecret | default (printf "%s-rancher" (include "sca.fullname" .)) -}}
{{- end -}}

{{- define "sca.rancherSecretKey" -}}
{{- if .Values.rancher.existingSecret -}}{{ .Values.rancher.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* Requests: base + per cluster × clustersPerReplica, unless resources are given. */}}
{{- define "sca.resources" -}}
{{- if .Values.resources -}}
{{ toYaml .Values.resources }}
{{- else -}}
{{- $s := .Values.sizing -}}
{{- $n := int .Values.clustersPerReplica -}}
{{- $mem := add (int $s.baseMemoryMi) (mul (int $s.perClusterMemoryMi) $n) -}}
{{- $cpu := add (int $s.baseCpuMilli) (mul (int $s.perClusterCpuMilli) $n) -}}
requests:
  memory: {{ printf "%dMi" $mem }}
  cpu: {{ printf "%dm" $cpu }}
limits:
  memory: {{ printf "%dMi" (div (mul $mem (int $s.memoryLimitPercent)) 100) }}
{{- end -}}
{{- end -}}

{{/*
The agent's environment, shared by the StatefulSet and the cleanup hook. Secrets and the CA come
in as files (SCA_*_FILE), never as values in the pod spec.
*/}}
{{- define "sca.rancherEnv" -}}
- name: SCA_RANCHER_URL
  value: {{ .Values.rancher.url | quote }}
- name: SCA_RANCHER_TOKEN_FILE
  value: /etc/scale-cluster-agent/rancher/token
- name: SCA_CLUSTER_PREFIX
  value: {{ include "sca.prefix" . | quote }}
{{- if .Values.rancher.caChecksum }}
- name: SCA_RANCHER_CA_CHECKSUM
  value: {{ .Values.rancher.caChecksum | quote }}
{{- end }}
{{- if .Values.rancher.caCert }}
- name: SCA_RANCHER_CA_FILE
  value: /etc/scale-cluster-agent/ca/ca.crt
{{- end }}
{{- if .Values.rancher.insecureSkipTlsVerify }}
- name: SCA_RANCHER_INSECURE_SKIP_TLS_VERIFY
  value: "true"
{{- end }}
- name: SCA_LOG
  value: {{ .Values.agent.logLevel | quote }}
{{- end -}}

{{- define "sca.rancherVolumeMounts" -}}
- name: rancher-token
  mountPath: /etc/scale-cluster-agent/rancher
  readOnly: true
{{- if .Values.rancher.caCert }}
- name: rancher-ca
  mountPath: /etc/scale-cluster-agent/ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sca.rancherVolumes" -}}
- name: rancher-token
  secret:
    secretName: {{ include "sca.rancherSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ include "sca.rancherSecretKey" . }}
        path: token
{{- if .Values.rancher.caCert }}
- name: rancher-ca
  configMap:
    name: {{ include "sca.fullname" . }}-ca
{{- end }}
{{- end -}}
