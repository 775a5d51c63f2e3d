"""A job's option values: read out of its spec, checked at creation, resolved from the data by the worker.

Which options exist, their bounds and ``auto`` rules are the library's declarations (``esft.config``); this
module only knows where each sits in the job spec and this deployment's limits (``Settings``). Every failure
is a ``ConfigError`` whose ``param`` is the option's path in the job spec (a 400 at creation, a failed job in
the worker).
"""

from __future__ import annotations

from typing import Any

from api.core.settings import Settings
from api.schemas.options import method_classes
from esft.config import AUTO, CONFIG_CLASSES, DataFacts, resolve_auto
from esft.errors import ConfigError
from esft.options import Option, declared_options


def option_classes(method_type: str = "esft") -> tuple[type, ...]:
    """Every config class a job of ``method_type`` sets: the library's configs plus the method's own config."""
    return tuple(dict.fromkeys((*CONFIG_CLASSES, *method_classes(method_type))))


def _options(method_type: str = "esft") -> dict[str, Option]:
    """API-exposed options by name (scoring and training share ``batch_size``/``seq_len``: training's wins)."""
    return {o.name: o for cls in option_classes(method_type) for o in declared_options(cls) if "api" in o.expose}


def api_path(name: str, method_type: str = "esft") -> str:
    """Where option ``name`` sits in the job spec, e.g. ``method.esft.hyperparameters.n_epochs``."""
    opt = _options(method_type).get(name)
    if opt is None or opt.section == "job":
        return name
    return f"method.{method_type}." + ("hyperparameters." if opt.section == "hyperparameters" else "") + name


def service_defaults(method_type: str = "esft") -> dict[str, Any]:
    """The value of every API option a spec leaves out: ``auto`` where it has a rule, else the library default.

    A ``supervised`` job is exactly these defaults plus its three hyperparameters.
    """
    return {o.name: AUTO if o.auto else o.default for o in _options(method_type).values() if o.section != "job"}


def spec_values(method: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The flat option values of a stored job spec, every option present (``auto`` kept as ``"auto"``)."""
    method_type = method.get("type", "esft")
    params = dict(method.get(method_type) or {})
    given = {k: v for k, v in params.items() if k != "hyperparameters"} | dict(params.get("hyperparameters") or {})
    values = {**service_defaults(method_type), **given}
    if seed is not None:
        values["seed"] = seed
    return values


def _both_rates(values: dict[str, Any]) -> list[tuple[str, str]]:
    unset = (AUTO, None)
    if values.get("learning_rate", AUTO) in unset or values.get("learning_rate_multiplier", AUTO) in unset:
        return []
    return [("learning_rate_multiplier", "give `learning_rate_multiplier` or `learning_rate`, not both")]


def check(values: dict[str, Any], settings: Settings, method_type: str = "esft") -> None:
    """Reject a spec the library refuses or this deployment does not allow (all problems in one error)."""
    problems: list[tuple[str, str]] = _both_rates(values)
    for name, limit in settings.option_limits().items():
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            problems.append((name, f"`{name}` is {value}, above this service's limit of {limit}"))
    for cls in option_classes(method_type):
        given = {o.name: values[o.name] for o in declared_options(cls) if values.get(o.name, AUTO) != AUTO}
        try:
            cls(**given)
        except ConfigError as exc:
            problems += [(exc.param or "", p) for p in exc.problems if (exc.param or "", p) not in problems]
    if problems:
        raise ConfigError([p for _, p in problems], param=api_path(problems[0][0], method_type))


def resolve(values: dict[str, Any], facts: DataFacts, settings: Settings, method_type: str = "esft") -> dict[str, Any]:
    """Every ``auto`` chosen by the library from the data; the planned steps checked against the limit."""
    resolved = resolve_auto(values, facts)
    limit = settings.max_steps
    if resolved["total_steps"] > limit:
        raise ConfigError(
            f"the job would run {resolved['total_steps']} optimizer steps ({facts.n_examples} examples), above "
            f"this service's limit of {limit}; lower n_epochs or set max_steps",
            param=api_path("n_epochs", method_type),
        )
    return resolved


def config_for(config_class: type, resolved: dict[str, Any]) -> Any:
    """The library config the worker builds: every option it sets (``worker`` in its exposure) from ``resolved``."""
    return config_class(**worker_values(config_class, resolved))


def worker_values(config_class: type, resolved: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``config_for``: exactly the declared worker options of ``config_class``."""
    return {o.name: resolved[o.name] for o in declared_options(config_class) if "worker" in o.expose}
