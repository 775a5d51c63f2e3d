"""A job's option values: read out of its spec, checked at creation, resolved from the data by the worker.

Which options exist, their bounds and ``auto`` rules are the library's declarations (``esft.config``); this
module only knows where each sits in the job spec and this deployment's limits (``Settings``). Every failure
is a ``ConfigError`` whose ``param`` is the option's path in the job spec (a 400 at creation, a failed job in
the worker).
"""

from __future__ import annotations

from typing import Any

from api.core.settings import Settings
from esft.config import AUTO, CONFIG_CLASSES, DataFacts, resolve_auto
from esft.errors import ConfigError
from esft.options import Option, declared_options

_PREFIX = {"method": "method.esft.", "hyperparameters": "method.esft.hyperparameters.", "job": ""}


def _options() -> dict[str, Option]:
    """API-exposed options by name (scoring and training share ``batch_size``/``seq_len``: training's wins)."""
    return {o.name: o for cls in CONFIG_CLASSES for o in declared_options(cls) if "api" in o.expose}


def api_path(name: str) -> str:
    """Where option ``name`` sits in the job spec, e.g. ``method.esft.hyperparameters.n_epochs``."""
    opt = _options().get(name)
    return _PREFIX[opt.section] + name if opt else name


def spec_values(method: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The flat option values of a stored job spec (``auto`` kept as ``"auto"``)."""
    esft = dict(method.get("esft") or {})
    values = {**{k: v for k, v in esft.items() if k != "hyperparameters"}, **(esft.get("hyperparameters") or {})}
    if seed is not None:
        values["seed"] = seed
    return values


def check(values: dict[str, Any], settings: Settings) -> None:
    """Reject a spec the library refuses or this deployment does not allow (all problems in one error)."""
    problems: list[tuple[str, str]] = []
    for name, limit in settings.option_limits().items():
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            problems.append((name, f"`{name}` is {value}, above this service's limit of {limit}"))
    for cls in CONFIG_CLASSES:
        given = {o.name: values[o.name] for o in declared_options(cls) if values.get(o.name, AUTO) != AUTO}
        try:
            cls(**given)
        except ConfigError as exc:
            problems += [(exc.param or "", p) for p in exc.problems if (exc.param or "", p) not in problems]
    if problems:
        raise ConfigError([p for _, p in problems], param=api_path(problems[0][0]))


def resolve(values: dict[str, Any], facts: DataFacts, settings: Settings) -> dict[str, Any]:
    """Every ``auto`` chosen by the library from the data; the planned steps checked against the limit."""
    resolved = resolve_auto(values, facts)
    limit = settings.max_steps
    if resolved["total_steps"] > limit:
        raise ConfigError(
            f"the job would run {resolved['total_steps']} optimizer steps ({facts.n_examples} examples), above "
            f"this service's limit of {limit}; lower n_epochs or set max_steps",
            param=api_path("n_epochs"),
        )
    return resolved


def config_for(config_class: type, resolved: dict[str, Any]) -> Any:
    """The library config the worker builds: every option it sets (``worker`` in its exposure) from ``resolved``."""
    return config_class(**worker_values(config_class, resolved))


def worker_values(config_class: type, resolved: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``config_for``: exactly the declared worker options of ``config_class``."""
    return {o.name: resolved[o.name] for o in declared_options(config_class) if "worker" in o.expose}
