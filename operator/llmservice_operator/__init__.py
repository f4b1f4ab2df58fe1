"""llmservice-operator: one LLMService manifest becomes a Ray Serve LLM deployment on GKE."""

GROUP = "llmservice.dev"
VERSION = "v1alpha1"
KIND = "LLMService"
PLURAL = "llmservices"
FIELD_MANAGER = "llmservice-operator"
