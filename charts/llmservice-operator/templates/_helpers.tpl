{{- define "llmservice.name" -}}llmservice-operator{{- end }}

{{- define "llmservice.labels" -}}
app.kubernetes.io/name: llmservice-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "llmservice.selector" -}}
app.kubernetes.io/name: llmservice-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The peering object kopf elects a leader in: one per release. */}}
{{- define "llmservice.peering" -}}{{ .Release.Name }}-llmservice-operator{{- end }}

{{- define "llmservice.clusterwide" -}}{{ if .Values.watchNamespaces }}false{{ else }}true{{ end }}{{- end }}

{{- define "llmservice.checkGke" -}}
{{- $g := .Values.gke | default dict -}}
{{- $set := list $g.project $g.location $g.cluster | compact | len -}}
{{- if and (gt $set 0) (lt $set 3) -}}
{{- fail "gke.project, gke.location and gke.cluster go together: set all three (or none to leave node pools unmanaged)" -}}
{{- end -}}
{{- end }}

{{/* Least privilege for what one namespace needs: no list/watch of Secrets. */}}
{{- define "llmservice.namespacedRules" -}}
- apiGroups: [llmservice.dev]
  resources: [llmservices]
  verbs: [get, list, watch, patch]
- apiGroups: [llmservice.dev]
  resources: [llmservices/status]
  verbs: [get, patch]
# delete: a suspended LLMService has no RayService (KubeRay 1.6 has no RayService suspend, and
# does not resume a suspended RayCluster); garbage collection removes it with its LLMService.
- apiGroups: [ray.io]
  resources: [rayservices]
  verbs: [get, list, watch, create, patch, delete]
# The RayService's replica bounds on its running Ray clusters (KubeRay does not carry them over).
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Scraping objects come and go with spec.observability.metrics (and the operator's setting).
- apiGroups: [monitoring.googleapis.com]
  resources: [podmonitorings]
  verbs: [get, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [secrets, persistentvolumeclaims, serviceaccounts]
  verbs: [get]
# The Ray cluster's token (ray.auth: token): created once per service, never read back in bulk.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# The Service KubeRay creates from serveService: the operator applies ingress.service to it
# (KubeRay writes a Service's spec only when traffic moves to a new Ray cluster); and the
# headless Service the edge sidecars share a rate limit through (created, deleted with it).
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# The service's Ray pods (watched by the operator's labels): which wait for a node and why, and
# what they mount (nothing a running pod mounts is deleted). They mount the edge config, API
# keys and certificate: annotating one after a change makes the kubelet refresh those files now
# instead of at its next periodic sync.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
