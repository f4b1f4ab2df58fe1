"""A rule of LLMServiceSpec, written once for Python and once for CEL, and the error it gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import LLMServiceSpec


@dataclass(frozen=True)
class Rule:
    field: str  # dotted path under spec, camelCase as users write it
    message: str
    violated: Callable[[LLMServiceSpec], bool]
    cel: str | None  # holds when valid; None when CEL cannot express it (renderer checks it)


@dataclass(frozen=True)
class FieldError:
    path: str  # full path, e.g. spec.replicas.min
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
