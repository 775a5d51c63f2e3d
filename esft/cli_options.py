"""CLI flags derived from the option declarations (``esft.options``): no command restates an option.

``@config_options(training=TrainingConfig)`` adds one typer option per CLI-exposed field of the config class
to a command and hands the command a built, validated ``TrainingConfig`` as its ``training`` argument. A bad
value exits with status 2 and a message naming the flag, as typer does for its own parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import click
import typer

from esft.errors import ConfigError
from esft.options import Option, declared_options


def cli_options(config_class: type) -> list[Option]:
    """The options of ``config_class`` that the CLI exposes, in declaration order."""
    return [o for o in declared_options(config_class) if "cli" in o.expose]


def _parameter(opt: Option) -> inspect.Parameter:
    """A keyword-only parameter whose annotation typer reads as ``--flag`` with the option's help."""
    kind: Any = opt.kind | None if opt.nullable else opt.kind
    extra: dict[str, Any] = {}
    if opt.choices:
        extra.update(click_type=click.Choice(opt.choices), metavar="[" + "|".join(opt.choices) + "]")
    help_text = f"{opt.help[0].upper()}{opt.help[1:]}."
    if opt.kind in (int, float) and opt.range_text() != "a finite number":
        help_text += f" Must be {opt.range_text()}."
    info = typer.Option(opt.cli_flag, help=help_text, show_default=opt.default is not None, **extra)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=opt.default,
                             annotation=Annotated[kind, info])


def config_options(**configs: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command so it takes the CLI options of each config class and receives the configs.

    Args:
        **configs: argument name -> config class, e.g. ``training=TrainingConfig``; the command must have a
            parameter of that name, which receives the built config.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name not in configs]
        added = {name: cli_options(cls) for name, cls in configs.items()}
        taken = {p.name for p in own}
        clashes = sorted(o.name for opts in added.values() for o in opts if o.name in taken)
        if clashes:
            raise TypeError(f"{command.__name__}: declared options {clashes} clash with the command's own parameters")

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for name, cls in configs.items():
                values = {o.name: kwargs.pop(o.name) for o in added[name]}
                try:
                    kwargs[name] = cls(**values)
                except ConfigError as exc:
                    flag = next((o.cli_flag for o in added[name] if o.name == exc.param), None)
                    raise typer.BadParameter(exc.message, param_hint=flag) from None
            return command(**kwargs)

        parameters = own + [_parameter(o) for opts in added.values() for o in opts]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def cli_args(config: Any) -> list[str]:
    """The flags that rebuild ``config`` on the command line (its CLI options; unset ones left out).

    The service's worker launches ``esft train`` under torchrun with these, so a job's options reach every
    rank through the same declarations as a user's flags.
    """
    args: list[str] = []
    for opt in cli_options(type(config)):
        value = getattr(config, opt.name)
        if value is None:
            continue
        if opt.kind is bool:
            on, _, off = opt.cli_flag.partition("/")
            if value or off:
                args.append(on if value else off)
        else:
            args += [opt.cli_flag, str(value)]
    return args
