{{- define "mlp.labels" -}}
app.kubernetes.io/name: ml-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mlp.image" -}}
{{ required "image.repository must name the registry path of the platform image (make image)" .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{- define "mlp.secret" -}}
{{ required "secrets.existingSecret must name a Kubernetes Secret with ML_PLATFORM_API_KEYS, ML_PLATFORM_MLFLOW_BACKEND_URI (and AWS keys unless IRSA)" .Values.secrets.existingSecret }}
{{- end }}

{{- define "mlp.kafkaBootstrap" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{ .Values.kafka.strimzi.cluster }}-kafka-bootstrap:9092
{{- else -}}
{{ required "kafka.externalBootstrap is required when kafka.strimzi.enabled is false" .Values.kafka.externalBootstrap }}
{{- end }}
{{- end }}

{{/* the environment every platform container shares: configuration inline, secrets by reference */}}
{{- define "mlp.env" -}}
- name: ML_PLATFORM_DATA
  value: {{ required "config.dataRoot must be an s3:// or hdfs:// data root" .Values.config.dataRoot | quote }}
- name: AWS_REGION
  value: {{ .Values.config.awsRegion | quote }}
{{- with .Values.config.s3Endpoint }}
- name: ML_PLATFORM_S3_ENDPOINT
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ include "mlp.kafkaBootstrap" . | quote }}
- name: MLFLOW_TRACKING_URI
  value: http://{{ .Release.Name }}-mlflow:{{ .Values.mlflow.port }}
- name: ML_PLATFORM_DAGSTER_URL
  value: {{ .Values.config.dagsterUrl | quote }}
- name: ML_PLATFORM_STORE_TABLE
  value: {{ .Values.config.predictionStoreTable | quote }}
{{- end }}

{{- define "mlp.envFrom" -}}
- secretRef:
    name: {{ include "mlp.secret" . }}
{{- end }}

{{- define "mlp.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
