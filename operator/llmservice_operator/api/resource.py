"""The LLMService object as a whole, and parsing a manifest into it with field-path errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import GROUP, KIND, VERSION
from ..yamlio import YAMLInputError, as_json
from .rules import FieldError, name_errors, spec_errors
from .schema import prune_nulls, schema_errors
from .spec import LLMServiceSpec
from .status import LLMServiceStatus

API_VERSION = f"{GROUP}/{VERSION}"


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str  # the rule is NAME_PATTERN (schema check and CRD), not pydantic's
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMService(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: Literal["llmservice.dev/v1alpha1"] = Field("llmservice.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LLMService"] = "LLMService"
    metadata: Metadata
    spec: LLMServiceSpec
    status: LLMServiceStatus | None = None


class InvalidLLMService(ValueError):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):  # pydantic union branch labels
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_errors(err: ValidationError) -> list[FieldError]:
    out = []
    for e in err.errors(include_url=False):
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field: remove it or check its spelling (fields are camelCase)"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of")
        out.append(FieldError(_path(e["loc"]), msg))
    return out


def parse(doc: Any) -> LLMService:
    """Validate a manifest the way `kubectl apply` would; raises InvalidLLMService with every
    problem found, each naming its field path. In the API server's order: nulls pruned, the
    CRD's structural schema (types, unknown fields, enums, patterns, bounds), then the rules
    (CEL); `doc` is JSON data as yamlio.load_all gives it."""
    if not isinstance(doc, dict):
        raise InvalidLLMService([FieldError("(document)", "must be a YAML mapping (an LLMService manifest)")])
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise InvalidLLMService(
            [
                FieldError(
                    "apiVersion/kind",
                    f"must be {API_VERSION} / {KIND}, got {doc.get('apiVersion')} / {doc.get('kind')}",
                )
            ]
        )
    try:
        doc = prune_nulls(as_json(doc))  # the controller's dicts and tests' too, as JSON
    except YAMLInputError as e:
        raise InvalidLLMService([FieldError("(document)", str(e))]) from None
    if errors := schema_errors(doc):
        raise InvalidLLMService(errors)
    try:
        svc = LLMService.model_validate(doc)
    except ValidationError as err:
        raise InvalidLLMService(_pydantic_errors(err)) from None
    errors = name_errors(svc.metadata.name) + spec_errors(svc.spec)
    if errors:
        raise InvalidLLMService(errors)
    return svc
