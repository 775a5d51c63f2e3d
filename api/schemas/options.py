"""Job-spec fields derived from the library's option declarations (``esft.options``), never restated here.

Each API-exposed option becomes a strict pydantic field with the option's type, bounds (finite numbers
only) and help; options the service can choose from the dataset also accept ``"auto"``, their default.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from api.schemas.common import StrictRequest
from esft.config import CONFIG_CLASSES
from esft.options import Option, declared_options


class AutoValue(StrEnum):
    """``"auto"``: let the service choose. An enum, not a literal, so generated clients parse ``int | "auto"``."""

    auto = "auto"


Auto = Annotated[AutoValue, Field(strict=False)]


def api_options(section: str) -> list[Option]:
    """The API-exposed options of one part of the job spec (``method``, ``hyperparameters`` or ``job``)."""
    return [
        o for cls in CONFIG_CLASSES for o in declared_options(cls) if "api" in o.expose and o.section == section
    ]


def _value_type(opt: Option) -> Any:
    if opt.choices:
        return Literal[opt.choices]  # type: ignore[valid-type]
    if opt.kind is bool or opt.kind is str:
        return opt.kind
    bounds = {name: getattr(opt, name) for name in ("gt", "ge", "lt", "le") if getattr(opt, name) is not None}
    if opt.kind is float:
        bounds["allow_inf_nan"] = False
    return Annotated[opt.kind, Field(**bounds)]


def field_of(opt: Option, *, default: Any = ...) -> tuple[Any, Any]:
    """``(annotation, FieldInfo)`` of an option for ``create_model`` (``default`` overrides the library's)."""
    annotation = _value_type(opt)
    description = opt.help
    if opt.nullable:
        annotation = annotation | None
    if opt.auto:
        annotation = annotation | Auto
        description += f" (auto: {opt.auto})"
    if default is ...:
        default = AutoValue.auto if opt.auto else opt.default
    return annotation, Field(default=default, description=description)


def model_of(name: str, section: str, doc: str, *, only: tuple[str, ...] | None = None, **extra: Any) -> type:
    """A strict request model with one field per API option of ``section`` (those named in ``only``), plus ``extra``."""
    fields = {o.name: field_of(o) for o in api_options(section) if only is None or o.name in only}
    return create_model(name, __base__=StrictRequest, __doc__=doc, **fields, **extra)
