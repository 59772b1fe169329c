{{/*
The embedder of one model: NVIDIA Triton serving the model repository that an init container
prepares (or the facesearch image's own Triton, runtime bundled), its Service, its metrics
Service, its HorizontalPodAutoscaler and its PodDisruptionBudget. Arguments: root, component
(the objects' name and component label), values (the embedder's values, with the model's own
overrides), gpu (bool: on the GPU nodes, asking for values.gpu.count GPUs) and model (id,
weights, version: what it serves).
*/}}

{{/* The settings of `facesearch models prepare` and of the bundled Triton: the embedder's and the model's. */}}
{{- define "facesearch.embedderEnv" -}}
- name: FACESEARCH_EMBEDDER_MODEL_REPOSITORY
  value: /models
- name: FACESEARCH_EMBEDDER_FLAVOUR
  value: {{ .values.flavour | quote }}
- name: FACESEARCH_EMBEDDER_WEIGHTS
  value: {{ .model.weights | quote }}
- name: FACESEARCH_EMBEDDER_MODEL_ID
  value: {{ .model.id | quote }}
- name: FACESEARCH_EMBEDDER_MODEL_VERSION
  value: {{ .model.version | toString | quote }}
- name: FACESEARCH_EMBEDDER_PRECISION
  value: {{ .values.precision | quote }}
- name: FACESEARCH_EMBEDDER_MAX_BATCH_SIZE
  value: {{ .values.maxBatchSize | quote }}
- name: FACESEARCH_EMBEDDER_INSTANCES
  value: {{ .values.instances | quote }}
- name: FACESEARCH_EMBEDDER_INTRA_OP_THREADS
  value: {{ .values.intraOpThreads | quote }}
- name: FACESEARCH_EMBEDDER_TORCH_DEVICE
  value: {{ ternary "cuda" "cpu" .values.gpu.enabled | quote }}
- name: FACESEARCH_EMBEDDER_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
{{- end -}}

{{- define "facesearch.embedder" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "facesearch.component" $ }}
  labels:
    {{- include "facesearch.labels" $ | nindent 4 }}
spec:
  {{- if not .values.autoscaling.enabled }}
  replicas: {{ .values.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "facesearch.selectorLabels" $ | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "facesearch.selectorLabels" $ | nindent 8 }}
    spec:
      {{- include "facesearch.podSpecCommon" .root | trim | nindent 6 }}
      {{- with include "facesearch.placement" $ | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      terminationGracePeriodSeconds: 30
      {{- if eq .values.runtime "nvidia" }}
      initContainers:
        # Converts the weights and writes the model repository (only what is missing or stale).
        - name: models
          image: {{ include "facesearch.image" .root }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command: ["facesearch", "models", "prepare", "--flavour", {{ .values.flavour | quote }}]
          securityContext:
            {{- toYaml .root.Values.containerSecurityContext | nindent 12 }}
          env:
            {{- include "facesearch.commonEnv" .root | nindent 12 }}
            {{- include "facesearch.embedderEnv" $ | nindent 12 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          volumeMounts:
            - name: models
              mountPath: /models
            - name: tmp
              mountPath: /tmp
      {{- end }}
      containers:
        - name: triton
          {{- if eq .values.runtime "nvidia" }}
          image: {{ printf "%s:%s" .values.tritonImage.repository .values.tritonImage.tag }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command: ["tritonserver"]
          args:
            - --model-repository=/models/{{ .values.flavour }}
            - --model-control-mode=none
            - --strict-readiness=true
            - --exit-on-error=true
            - --grpc-port={{ .values.grpcPort }}
            - --http-port={{ .values.httpPort }}
            - --allow-metrics=true
            - --metrics-port={{ .values.metricsPort }}
            - --allow-gpu-metrics={{ .values.gpu.enabled }}
            - --exit-timeout-secs=25
          env:
            - name: HOME
              value: /tmp
          {{- else }}
          # The facesearch image's own tritonserver, which prepares the repository first.
          image: {{ include "facesearch.image" .root }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command: ["python", "-m", "services.embedder"]
          env:
            {{- include "facesearch.commonEnv" .root | nindent 12 }}
            {{- include "facesearch.embedderEnv" $ | nindent 12 }}
            - name: FACESEARCH_EMBEDDER_HOST
              value: "0.0.0.0"
            - name: FACESEARCH_EMBEDDER_PORT
              value: {{ .values.grpcPort | quote }}
            - name: FACESEARCH_EMBEDDER_HTTP_PORT
              value: {{ .values.httpPort | quote }}
            - name: FACESEARCH_EMBEDDER_METRICS_PORT
              value: {{ .values.metricsPort | quote }}
            - name: FACESEARCH_EMBEDDER_STARTUP_TIMEOUT_S
              value: {{ .values.startupTimeoutSeconds | quote }}
            - name: FACESEARCH_EMBEDDER_LOG_FORMAT
              value: json
          {{- end }}
          securityContext:
            {{- toYaml .root.Values.containerSecurityContext | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ .values.grpcPort }}
            - name: http
              containerPort: {{ .values.httpPort }}
            - name: metrics
              containerPort: {{ .values.metricsPort }}
          # Model load (and, on the GPU, TensorRT's engine build) can take minutes.
          startupProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: 10
            failureThreshold: {{ div .values.startupTimeoutSeconds 10 }}
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: 10
            failureThreshold: 3
          livenessProbe:
            httpGet:
              path: /v2/health/live
              port: http
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          resources:
            {{- include "facesearch.resources" (dict "resources" .values.resources "gpus" (ternary .values.gpu.count 0 .values.gpu.enabled)) | nindent 12 }}
          volumeMounts:
            - name: models
              mountPath: /models
            - name: tmp
              mountPath: /tmp
            - name: shm
              mountPath: /dev/shm
      volumes:
        {{- include "facesearch.tmpVolume" .root | nindent 8 }}
        # Triton's python backend passes tensors through shared memory.
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: 1Gi
        - name: models
          {{- if .values.modelRepository.persistentVolumeClaim }}
          persistentVolumeClaim:
            claimName: {{ .values.modelRepository.persistentVolumeClaim }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ .values.modelRepository.sizeLimit }}
          {{- end }}
---
{{ include "facesearch.service" (merge (dict "ports" (list (dict "name" "grpc" "port" .values.grpcPort) (dict "name" "http" "port" .values.httpPort))) $) }}
---
{{ include "facesearch.metricsService" (merge (dict "job" "embedder") $) }}
{{- if .values.autoscaling.enabled }}
---
# Scales on Triton's queue time per inference request: the pods metric that
# prometheus-adapter serves from the rule in prometheus-adapter-rules.yaml.
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "facesearch.component" $ }}
  labels:
    {{- include "facesearch.labels" $ | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "facesearch.component" $ }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    - type: Pods
      pods:
        metric:
          name: facesearch_triton_queue_time_per_request_microseconds
        target:
          type: AverageValue
          averageValue: {{ .values.autoscaling.targetQueueTimeMicroseconds | quote }}
  behavior:
    # A new replica loads the model for minutes: scale up promptly, down slowly.
    scaleUp:
      stabilizationWindowSeconds: 60
      policies:
        - type: Pods
          value: 1
          periodSeconds: 120
    scaleDown:
      stabilizationWindowSeconds: 900
{{- end }}
{{- include "facesearch.pdb" $ }}
{{- end -}}
