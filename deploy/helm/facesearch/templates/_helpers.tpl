{{/* Names and labels shared by every template. */}}

{{- define "facesearch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "facesearch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "facesearch.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "facesearch.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: <fullname>-<component>. */}}
{{- define "facesearch.component" -}}
{{- printf "%s-%s" (include "facesearch.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "facesearch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "facesearch.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "facesearch.labels" -}}
{{ include "facesearch.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "facesearch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "facesearch.qdrantUrl" -}}
{{- if .Values.qdrant.externalUrl -}}
{{- .Values.qdrant.externalUrl -}}
{{- else -}}
{{- printf "http://%s:%v" (include "facesearch.component" (dict "root" . "component" "qdrant")) .Values.qdrant.httpPort -}}
{{- end -}}
{{- end -}}

{{- define "facesearch.apiKeysSecret" -}}
{{- default (include "facesearch.component" (dict "root" . "component" "api-keys")) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* Pod-level settings every pod of the chart has. */}}
{{- define "facesearch.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- end -}}

{{/* Node selector and tolerations: the GPU nodes' when gpu is true, then the component's own. */}}
{{- define "facesearch.placement" -}}
{{- $nodeSelector := dict -}}
{{- $tolerations := list -}}
{{- if .gpu -}}
{{- $nodeSelector = merge $nodeSelector .root.Values.gpuNodes.nodeSelector -}}
{{- $tolerations = concat $tolerations .root.Values.gpuNodes.tolerations -}}
{{- end -}}
{{- $nodeSelector = merge $nodeSelector (.values.nodeSelector | default dict) -}}
{{- $tolerations = concat $tolerations (.values.tolerations | default list) -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The environment every facesearch process gets. */}}
{{- define "facesearch.commonEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/* The writable /tmp of a read-only root filesystem. */}}
{{- define "facesearch.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 256Mi
{{- end -}}

{{/* Settings from a values map {NAME: value} as FACESEARCH_<PREFIX>_<NAME> variables. */}}
{{- define "facesearch.settingsEnv" -}}
{{- range $name, $value := .env }}
- name: {{ printf "FACESEARCH_%s_%s" ($.prefix | upper) ($name | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for one component. */}}
{{- define "facesearch.pdb" -}}
{{- if .root.Values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "facesearch.component" . }}
  labels:
    {{- include "facesearch.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "facesearch.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* A HorizontalPodAutoscaler on CPU use for one component's Deployment. */}}
{{- define "facesearch.cpuAutoscaler" -}}
{{- if .values.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "facesearch.component" . }}
  labels:
    {{- include "facesearch.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "facesearch.component" . }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .values.autoscaling.targetCPUUtilization }}
{{- end }}
{{- end -}}

{{/* A Service for one component: ports is a list of {name, port}; name, type, headless,
annotations, metrics (a Service for Prometheus: labelled for the ServiceMonitors) and job
(its Prometheus job, default the component) optional. */}}
{{- define "facesearch.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name | default (include "facesearch.component" .) }}
  labels:
    {{- include "facesearch.labels" . | nindent 4 }}
    {{- if .metrics }}
    facesearch.io/metrics: "true"
    facesearch.io/job: {{ .job | default .component }}
    {{- end }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .type | default "ClusterIP" }}
  {{- if .headless }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "facesearch.selectorLabels" . | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      {{- if hasPrefix "grpc" .name }}
      appProtocol: grpc
      {{- end }}
    {{- end }}
{{- end -}}

{{/*
A Deployment of one of the facesearch gRPC services (gateway, detector, search): the
facesearch image running `python -m <module>`, grpc.health.v1 probes on its gRPC port,
/metrics on its metrics port. Arguments: root, component, values, module, env (a list of
variables), gpu (bool: placed on the GPU nodes), gpus (GPUs per pod), volumes and volumeMounts (lists), sidecars (a list of containers),
podAnnotations.
*/}}
{{- define "facesearch.grpcDeployment" -}}
{{- $prefix := .component | upper -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "facesearch.component" . }}
  labels:
    {{- include "facesearch.labels" . | nindent 4 }}
spec:
  {{- if not .values.autoscaling.enabled }}
  replicas: {{ .values.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "facesearch.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "facesearch.selectorLabels" . | nindent 8 }}
      {{- with .podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "facesearch.podSpecCommon" .root | trim | nindent 6 }}
      {{- with include "facesearch.placement" . | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "facesearch.image" .root }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command: ["python", "-m", {{ .module | quote }}]
          securityContext:
            {{- toYaml .root.Values.containerSecurityContext | nindent 12 }}
          env:
            {{- include "facesearch.commonEnv" . | nindent 12 }}
            - name: FACESEARCH_{{ $prefix }}_HOST
              value: "0.0.0.0"
            - name: FACESEARCH_{{ $prefix }}_PORT
              value: {{ .values.port | quote }}
            - name: FACESEARCH_{{ $prefix }}_METRICS_PORT
              value: {{ .values.metricsPort | quote }}
            - name: FACESEARCH_{{ $prefix }}_LOG_FORMAT
              value: json
            - name: FACESEARCH_{{ $prefix }}_LOG_LEVEL
              value: {{ .root.Values.logLevel | quote }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with include "facesearch.settingsEnv" (dict "prefix" .component "env" .values.env) | trim }}
            {{- . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ .values.port }}
            - name: metrics
              containerPort: {{ .values.metricsPort }}
          startupProbe:
            grpc:
              port: {{ .values.port }}
            periodSeconds: 5
            failureThreshold: 60
          readinessProbe:
            grpc:
              port: {{ .values.port }}
            periodSeconds: 10
            failureThreshold: 3
          livenessProbe:
            grpc:
              port: {{ .values.port }}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          resources:
            {{- include "facesearch.resources" (dict "resources" .values.resources "gpus" .gpus) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
        {{- with .sidecars }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "facesearch.tmpVolume" . | nindent 8 }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* A container's resources, with "gpus" NVIDIA GPUs asked for when it is above 0. */}}
{{- define "facesearch.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) ($resources.requests | default dict)) -}}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) ($resources.limits | default dict)) -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* The headless Service of one component's metrics port, which its ServiceMonitor selects;
job: its Prometheus job (default: the component). */}}
{{- define "facesearch.metricsService" -}}
{{ include "facesearch.service" (merge (dict "name" (printf "%s-metrics" (include "facesearch.component" .)) "headless" true "metrics" true "ports" (list (dict "name" "metrics" "port" .values.metricsPort))) .) }}
{{- end -}}

{{/* The component (and name suffix) of the embedder of extraModels entry with this id. */}}
{{- define "facesearch.extraEmbedder" -}}
{{- printf "embedder-%s" . -}}
{{- end -}}

{{/* Fails on an extraModels entry that repeats another's id or is model.id. */}}
{{- define "facesearch.checkExtraModels" -}}
{{- $seen := list .Values.model.id -}}
{{- range .Values.extraModels -}}
{{- if eq .id $.Values.model.id -}}
{{- fail (printf "extraModels: %s is model.id, which the embedder serves already; list only other models" .id) -}}
{{- end -}}
{{- if has .id $seen -}}
{{- fail (printf "extraModels: %s is listed twice; list each model once" .id) -}}
{{- end -}}
{{- $seen = append $seen .id -}}
{{- end -}}
{{- end -}}

{{/* The gateway's address inside the cluster: its Service and port, as the Jobs call it. */}}
{{- define "facesearch.gatewayAddress" -}}
{{- printf "%s:%v" (include "facesearch.component" (dict "root" . "component" "gateway")) .Values.gateway.port -}}
{{- end -}}
