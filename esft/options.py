"""Option declarations: every scoring, selection and training option is declared once, here-shaped.

A config field declared with ``option(...)`` carries its help, static bounds, allowed values and where the
option is exposed (``cli``: a flag of ``esft score/select/train``; ``api``: a field of the service's job spec;
``worker``: set by the service's worker when it builds the config). The CLI flags, the API's request schema
and the worker's resolution are all derived from these declarations (``declared_options``), and the configs
check their values against them (``check_declared``), so no layer restates a name, default or bound.

Static bounds live here (finite numbers, learning rate in (0, 1], positive sizes). Deployment limits (largest
epoch count, batch, sequence length, ...) belong to the service's settings.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

Exposure = Literal["cli", "api", "worker"]
EVERYWHERE: tuple[Exposure, ...] = ("cli", "api", "worker")


@dataclass(frozen=True)
class Option:
    """One declared option: what it is, which values it takes, and where it is exposed.

    Attributes:
        name: the config field name (also the API field and, dashed, the CLI flag).
        kind: ``int``, ``float``, ``bool`` or ``str``.
        default: the library default (None: unset, the library decides).
        help: one line for ``--help``, the OpenAPI description and the docs.
        nullable: None is an accepted value.
        choices: the allowed values of a ``str`` option.
        gt, ge, lt, le: static bounds of a number.
        expose: where users can set it.
        auto: what ``"auto"`` means, for options the service may resolve from the dataset; None if it cannot.
        section: the part of the service's job spec the option belongs to (``method`` or ``hyperparameters``).
        flag: the CLI flag (default ``--name-with-dashes``).
    """

    name: str
    kind: type
    default: Any
    help: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    expose: tuple[Exposure, ...] = EVERYWHERE
    auto: str | None = None
    section: str = "hyperparameters"
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this option, or None."""
        if value is None:
            return None if self.nullable else f"`{self.name}` must be set, got None"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"`{self.name}` must be true or false, got {value!r}"
        if self.kind is str:
            if self.choices and value not in self.choices:
                return f"`{self.name}` must be one of {', '.join(self.choices)}; got {value!r}"
            return None
        return self._number_problem(value)

    def _number_problem(self, value: Any) -> str | None:
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"`{self.name}` must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"`{self.name}` must be a finite number, got {value!r}"
        broken = [
            text
            for bound, ok, text in (
                (self.gt, lambda b: value > b, f"> {self.gt}"),
                (self.ge, lambda b: value >= b, f">= {self.ge}"),
                (self.lt, lambda b: value < b, f"< {self.lt}"),
                (self.le, lambda b: value <= b, f"<= {self.le}"),
            )
            if bound is not None and not ok(bound)
        ]
        if broken:
            return f"`{self.name}` must be {self.range_text()}, got {value!r}"
        return None

    def range_text(self) -> str:
        """The bounds as a phrase, e.g. ``in (0, 1]`` or ``>= 1``."""
        low = f"({_num(self.gt)}" if self.gt is not None else f"[{_num(self.ge)}" if self.ge is not None else None
        high = f"{_num(self.lt)})" if self.lt is not None else f"{_num(self.le)}]" if self.le is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"> {_num(self.gt)}" if self.gt is not None else f">= {_num(self.ge)}"
        if high:
            return f"< {_num(self.lt)}" if self.lt is not None else f"<= {_num(self.le)}"
        return "a finite number"


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(default: Any, help: str, **spec: Any) -> Any:
    """Declare a config field as an option (a ``dataclasses.field`` carrying its ``Option`` facts).

    Args:
        default: the library default.
        help: one line of help.
        **spec: ``Option`` attributes: ``choices``, ``gt``/``ge``/``lt``/``le``, ``expose``, ``auto``,
            ``section``, ``flag``. ``kind`` and ``nullable`` come from the field's annotation.
    """
    return dataclasses.field(default=default, metadata={"option": {"help": help, **spec}})


def declared_options(config_class: type) -> list[Option]:
    """The ``Option`` of every declared field of ``config_class``, in field order.

    >>> from esft.config import SelectionConfig
    >>> [o.name for o in declared_options(SelectionConfig)]
    ['score_function', 'top_p', 'max_experts_per_layer']
    """
    hints = typing.get_type_hints(config_class)
    found = []
    for f in dataclasses.fields(config_class):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        kind, nullable, choices = _kind_of(hints[f.name])
        found.append(Option(f.name, kind, f.default, nullable=nullable, **{"choices": choices, **spec}))
    return found


def _kind_of(annotation: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    """``(kind, nullable, choices)`` of an annotation such as ``int | None`` or ``Literal["a", "b"]``."""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    nullable = type(None) in args
    (inner,) = [a for a in args if a is not type(None)]
    if get_origin(inner) is Literal:
        return str, nullable, tuple(get_args(inner))
    if inner not in (int, float, bool, str):
        raise TypeError(f"option annotation {annotation!r} is not int, float, bool, str or a Literal")
    return inner, nullable, None


def check_declared(config: Any) -> tuple[list[str], str | None]:
    """Check every declared field of a config instance: ``(problems, name of the first bad field)``."""
    problems, first = [], None
    for opt in declared_options(type(config)):
        problem = opt.problem(getattr(config, opt.name))
        if problem:
            problems.append(problem)
            first = first or opt.name
    return problems, first
