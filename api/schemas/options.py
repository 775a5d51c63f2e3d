"""Job-spec fields derived from the library's option declarations (``esft.options``), never restated here.

Each API-exposed option becomes a strict pydantic field with the option's type, bounds (finite numbers
only) and help; options the service can choose from the dataset also accept ``"auto"``, their default.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from api.schemas.common import StrictRequest
from esft.config import CONFIG_CLASSES, ScoringConfig, SelectionConfig
from esft.methods import get_method
from esft.options import Option, declared_options

# Options of the expert scoring and selection that the methods training an expert selection share.
SELECTION_CLASSES: tuple[type, ...] = (ScoringConfig, SelectionConfig)


class AutoValue(StrEnum):
    """``"auto"``: let the service choose. An enum, not a literal, so generated clients parse ``int | "auto"``."""

    auto = "auto"


Auto = Annotated[AutoValue, Field(strict=False)]


def method_classes(method_type: str) -> tuple[type, ...]:
    """The config classes whose ``method``-section options a ``method.<type>`` object holds.

    ESFT (and ``supervised``, ESFT's defaults): every library config (scoring, selection and the paper's
    variant flags); a method that trains an expert selection: scoring and selection plus its own config
    (``rank``, ...); any other: its own config. Hyperparameters are the training config's for every method.
    """
    if method_type in ("esft", "supervised"):
        return CONFIG_CLASSES
    spec = get_method(method_type)
    own = (spec.config_cls,) if spec.config_cls is not None else ()
    return (SELECTION_CLASSES if spec.needs_expert_config else ()) + own


def api_options(section: str, classes: tuple[type, ...] = CONFIG_CLASSES) -> list[Option]:
    """The API-exposed options of one part of the job spec (``method``, ``hyperparameters`` or ``job``)."""
    return [o for cls in classes for o in declared_options(cls) if "api" in o.expose and o.section == section]


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


def model_of(name: str, section: str, doc: str, *, only: tuple[str, ...] | None = None,
             classes: tuple[type, ...] = CONFIG_CLASSES, **extra: Any) -> type:
    """A strict request model with one field per API option of ``section`` in ``classes`` (those named in
    ``only``), plus ``extra``."""
    fields = {o.name: field_of(o) for o in api_options(section, classes) if only is None or o.name in only}
    return create_model(name, __base__=StrictRequest, __doc__=doc, **fields, **extra)
