"""LLMService v1alpha1: spec and status models, cross-field rules, CRD generation."""

from .resource import API_VERSION, InvalidLLMService, LLMService, parse
from .rules import RULES, FieldError
from .spec import LLMServiceSpec
from .status import LLMServiceStatus

__all__ = [
    "API_VERSION",
    "RULES",
    "FieldError",
    "InvalidLLMService",
    "LLMService",
    "LLMServiceSpec",
    "LLMServiceStatus",
    "parse",
]
