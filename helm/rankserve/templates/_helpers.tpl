{{/*
Names, labels and the settings that must agree between the gateway and Triton. Every
template takes them from here, so the gateway's Triton address, shared-memory switch and
model names are computed once.
*/}}

{{- define "rankserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rankserve.fullname" -}}
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

{{/* Name of the Triton Deployment and Service; the gateway's Service keeps the full name. */}}
{{- define "rankserve.tritonName" -}}
{{- printf "%s-triton" (include "rankserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rankserve.gatewayName" -}}
{{- printf "%s-gateway" (include "rankserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rankserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rankserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rankserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rankserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rankserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rankserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rankserve
{{- end }}

{{/*
Pods that serve /v1/rank: with topology=sidecar the Triton pods, else the gateway pods.
Call with (dict "ctx" $ "component" "triton").
*/}}
{{- define "rankserve.componentSelector" -}}
{{ include "rankserve.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rankserve.gatewayComponent" -}}
{{- if eq .Values.topology "sidecar" }}triton{{ else }}gateway{{ end }}
{{- end }}

{{/* The gateway's Triton gRPC address: localhost in the same pod, else Triton's Service. */}}
{{- define "rankserve.tritonURL" -}}
{{- if eq .Values.topology "sidecar" }}
{{- printf "127.0.0.1:%d" (int .Values.triton.ports.grpc) }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "rankserve.tritonName" .) .Release.Namespace (int .Values.triton.ports.grpc) }}
{{- end }}
{{- end }}

{{/* System shared memory needs one host and one /dev/shm: sidecar only. */}}
{{- define "rankserve.sharedMemory" -}}
{{- and (eq .Values.topology "sidecar") .Values.gateway.tritonSharedMemory }}
{{- end }}

{{/* Where Triton reads the model repository. */}}
{{- define "rankserve.tritonModelPath" -}}
{{- if eq .Values.modelRepository.source "image" }}
{{- .Values.modelRepository.image.path }}
{{- else }}
{{- .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}

{{/* Where the gateway reads the model repository (the model cards). */}}
{{- define "rankserve.gatewayModelPath" -}}
{{- if eq .Values.modelRepository.source "image" }}
{{- .Values.gateway.bakedModelRepository }}
{{- else }}
{{- .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}

{{/* The gateway's settings file: user settings first, then the values the chart owns. */}}
{{- define "rankserve.gatewayConfig" -}}
{{- $owned := dict
  "host" "0.0.0.0"
  "port" (int .Values.gateway.port)
  "grpc_port" (int .Values.gateway.grpcPort)
  "backend" "triton"
  "model_repository" (include "rankserve.gatewayModelPath" .)
  "default_model" .Values.models.default
  "triton_url" (include "rankserve.tritonURL" .)
  "triton_shared_memory" (eq (include "rankserve.sharedMemory" .) "true")
  "instances" (int .Values.triton.instanceCount)
}}
{{- toYaml (merge $owned (deepCopy .Values.gateway.settings)) }}
{{- end }}

{{/* Rejections that a JSON schema cannot express; each message names the value to fix. */}}
{{- define "rankserve.validate" -}}
{{- if not (has .Values.models.default .Values.models.load) }}
{{- fail (printf "models.default %q must be one of models.load %v" .Values.models.default .Values.models.load) }}
{{- end }}
{{- if and (eq .Values.modelRepository.source "pvc") (not .Values.modelRepository.pvc.claimName) }}
{{- fail "modelRepository.pvc.claimName is required when modelRepository.source is pvc" }}
{{- end }}
{{- if and (eq .Values.modelRepository.source "objectStore") (not .Values.modelRepository.objectStore.uri) }}
{{- fail "modelRepository.objectStore.uri is required when modelRepository.source is objectStore" }}
{{- end }}
{{- if and (eq .Values.topology "sidecar") (has (int .Values.gateway.port) (list (int .Values.triton.ports.http) (int .Values.triton.ports.grpc) (int .Values.triton.ports.metrics))) }}
{{- fail (printf "gateway.port %d collides with a Triton port in the same pod (topology sidecar)" (int .Values.gateway.port)) }}
{{- end }}
{{- if or (eq (int .Values.gateway.grpcPort) (int .Values.gateway.port)) (and (eq .Values.topology "sidecar") (has (int .Values.gateway.grpcPort) (list (int .Values.triton.ports.http) (int .Values.triton.ports.grpc) (int .Values.triton.ports.metrics)))) }}
{{- fail (printf "gateway.grpcPort %d collides with gateway.port or a Triton port in the same pod" (int .Values.gateway.grpcPort)) }}
{{- end }}
{{- if and (eq .Values.topology "sidecar") (le (int .Values.triton.preStopSleepSeconds) (int .Values.gateway.preStopSleepSeconds)) }}
{{- fail "triton.preStopSleepSeconds must exceed gateway.preStopSleepSeconds (topology sidecar): Triton has to outlive its gateway's drain" }}
{{- end }}
{{- if le (int .Values.triton.terminationGracePeriodSeconds) (int .Values.triton.preStopSleepSeconds) }}
{{- fail "triton.terminationGracePeriodSeconds must exceed triton.preStopSleepSeconds" }}
{{- end }}
{{- if and .Values.gateway.auth.enabled (not .Values.gateway.auth.existingSecret) (not .Values.gateway.auth.token) }}
{{- fail "gateway.auth.enabled needs gateway.auth.existingSecret or gateway.auth.token" }}
{{- end }}
{{- end }}

{{- define "rankserve.authSecretName" -}}
{{- default (printf "%s-auth" (include "rankserve.fullname" .)) .Values.gateway.auth.existingSecret }}
{{- end }}

{{/* Environment giving a container the gateway's auth token, if auth is on. */}}
{{- define "rankserve.authEnv" -}}
{{- if .Values.gateway.auth.enabled }}
- name: RANKSERVE_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "rankserve.authSecretName" . }}
      key: {{ .Values.gateway.auth.secretKey }}
{{- end }}
{{- end }}

{{- define "rankserve.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{/* The model-repository volume (none for source=image). */}}
{{- define "rankserve.modelVolume" -}}
{{- if eq .Values.modelRepository.source "objectStore" }}
- name: model-repository
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.objectStore.sizeLimit }}
{{- else if eq .Values.modelRepository.source "pvc" }}
- name: model-repository
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "rankserve.modelVolumeMount" -}}
{{- if ne .Values.modelRepository.source "image" }}
- name: model-repository
  mountPath: {{ .Values.modelRepository.mountPath }}
  readOnly: true
  {{- if and (eq .Values.modelRepository.source "pvc") .Values.modelRepository.pvc.subPath }}
  subPath: {{ .Values.modelRepository.pvc.subPath }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Init container filling the emptyDir from the object store (source=objectStore). */}}
{{- define "rankserve.modelSyncInitContainer" -}}
{{- $os := .Values.modelRepository.objectStore }}
{{- if eq .Values.modelRepository.source "objectStore" }}
- name: sync-models
  image: {{ printf "%s:%s" $os.image.repository $os.image.tag | quote }}
  imagePullPolicy: {{ $os.image.pullPolicy }}
  command:
    {{- toYaml (concat $os.command (list $os.uri .Values.modelRepository.mountPath)) | nindent 4 }}
  env:
    - name: HOME
      value: /tmp
    {{- with $os.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $os.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  resources:
    {{- toYaml $os.resources | nindent 4 }}
  volumeMounts:
    - name: model-repository
      mountPath: {{ .Values.modelRepository.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* The gateway container, the same in the Triton pod (sidecar) and its own Deployment. */}}
{{- define "rankserve.gatewayContainer" -}}
- name: gateway
  image: {{ include "rankserve.gatewayImage" . | quote }}
  imagePullPolicy: {{ .Values.gateway.image.pullPolicy }}
  command: ["rankserve"]
  args: ["serve"]
  env:
    - name: RANKSERVE_CONFIG
      value: /etc/rankserve/config.yaml
    {{- with include "rankserve.authEnv" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- with .Values.gateway.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.gateway.port }}
      protocol: TCP
    - name: grpc
      containerPort: {{ .Values.gateway.grpcPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
    periodSeconds: {{ .Values.gateway.livenessProbe.periodSeconds }}
    failureThreshold: {{ .Values.gateway.livenessProbe.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: http
    periodSeconds: {{ .Values.gateway.readinessProbe.periodSeconds }}
    failureThreshold: {{ .Values.gateway.readinessProbe.failureThreshold }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ .Values.gateway.preStopSleepSeconds }}"]
  securityContext:
    {{- toYaml .Values.gateway.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.gateway.resources | nindent 4 }}
  volumeMounts:
    - name: gateway-config
      mountPath: /etc/rankserve
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- with include "rankserve.modelVolumeMount" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- if eq (include "rankserve.sharedMemory" .) "true" }}
    - name: dshm
      mountPath: /dev/shm
    {{- end }}
{{- end }}

{{/* Pod-level fields shared by both Deployments. */}}
{{- define "rankserve.podCommon" -}}
serviceAccountName: {{ include "rankserve.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Annotation that restarts the pods when the gateway's settings change. */}}
{{- define "rankserve.configChecksum" -}}
checksum/gateway-config: {{ include "rankserve.gatewayConfig" . | sha256sum }}
{{- end }}
