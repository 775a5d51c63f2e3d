"""Service commands for the `esft` CLI: serve, quickstart, models add, keys create|list|revoke, limits, openapi.

``register(app)`` adds them to the library's typer app (entry point ``esft.commands``); ``python -m api.cli``
runs them standalone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.core.settings import Settings

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Service data folder (default $ESFT_DATA_DIR or ./.esft).")
]


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["ESFT_DATA_DIR"] = str(data_dir)  # the worker subprocess reads the same folder
    return Settings()


def ensure_default_key(settings: Settings) -> str | None:
    """On first start, create an admin key for project ``default``, kept in ``<data_dir>/api_key`` (0600)."""
    from sqlalchemy import func, select

    from api.core.db.models import ApiKey
    from api.core.db.session import session_scope
    from api.services.auth import create_key

    with session_scope(settings.database_url) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        raw, _ = create_key(session, "default", name="embedded admin", is_admin=True)
    path = settings.api_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(raw + "\n")
    return raw


def first_key_notice(settings: Settings) -> str:
    """What ``esft serve`` says about the key it created: where it is, never the key (server output is a log)."""
    return (
        f"Created an admin API key for project 'default' in {settings.api_key_file} (readable by this user only); "
        "`esft quickstart` uses it, or read it with `cat`."
    )


def start_worker(settings: Settings, *, concurrency: int = 1, log_level: str = "INFO") -> subprocess.Popen:
    """A Celery worker subprocess on the configured queue (prefork, so CUDA is only touched in the child)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "-Q",
        settings.queue,
        "-c",
        str(concurrency),
        "--loglevel",
        log_level,
        "-n",
        f"esft-{os.getpid()}@%h",
    ]
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "ESFT_PARENT_PID": str(os.getpid()),
    }
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM to the Celery main process only), then SIGKILL its whole group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Also run a Celery worker subprocess.")] = True,
    inference: Annotated[bool, typer.Option(help="Also serve /v1/chat/completions for registered models.")] = True,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the API and a worker on this machine: SQLite, filesystem broker, local storage, CPU or GPU."""
    import uvicorn

    from api.core.logs import configure_logging
    from api.core.migrate import upgrade
    from api.core.queue import ensure_broker_dirs
    from api.main import create_app

    settings = _settings(data_dir)
    configure_logging(settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    ensure_broker_dirs(settings)
    if ensure_default_key(settings) is not None:
        typer.echo(first_key_notice(settings))
    process = start_worker(settings) if worker else None

    def shutdown(signum: int, _frame) -> None:
        # uvicorn restores this handler and re-raises the signal after its graceful shutdown.
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, shutdown)
    try:
        app = create_app(settings, migrate=False)
        if inference:
            # The inference engine (torch) lives in this process only: the API modules never import torch.
            from api.inference.embedded import mount_inference_pool

            mount_inference_pool(app)
        # Our handler (JSON lines) for uvicorn's loggers too; the access log is ours, with the request id.
        uvicorn.run(app, host=host, port=port, log_level="info", log_config=None, access_log=False)
    finally:
        if process is not None:
            stop_process(process)


def quickstart(
    url: Annotated[str, typer.Option(help="Base URL of a running `esft serve`.")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="ESFT_API_KEY", help="Default: <data_dir>/api_key.")] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a server that is still starting.")] = 120,
    data_dir: DataDirOpt = None,
) -> None:
    """Train a toy MoE on a built-in task through the HTTP API and compare its answers with the base model."""
    from api.quickstart import run

    settings = _settings(data_dir)
    key = api_key or _wait_for_key(settings, wait)
    if not key:
        typer.echo("No API key: pass --api-key or start `esft serve` once to create one.", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run(url, key, settings, steps=steps, wait=wait))


def _wait_for_key(settings: Settings, wait: float) -> str | None:
    """The embedded admin key, waiting for a just-started `esft serve` to write it."""
    import time

    deadline = time.monotonic() + wait
    while True:
        if settings.api_key_file.is_file() and (key := settings.api_key_file.read_text().strip()):
            return key
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def models_add(
    path: Annotated[Path, typer.Argument(help="Model directory (save_pretrained layout).")],
    model_id: Annotated[str | None, typer.Option("--id", help="Name jobs use; default the folder name.")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Register a local base model directly in the database (admin, this machine)."""
    from api.core.db.session import session_scope
    from api.core.errors import ServiceError
    from api.core.migrate import upgrade
    from api.services.registry import add_base_model, base_public

    settings = _settings(data_dir)
    upgrade(settings.database_url)
    try:
        with session_scope(settings.database_url) as session:
            row = add_base_model(session, model_id or path.resolve().name, str(path), roots=None)
            typer.echo(json.dumps(base_public(row).model_dump(), indent=2))
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def keys_create(
    project: Annotated[str, typer.Option(help="Project the key belongs to (created if new).")] = "default",
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    admin: Annotated[bool, typer.Option(help="Allow admin endpoints.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an API key (printed once; only its sha256 is stored)."""
    from api.core.db.session import session_scope
    from api.core.migrate import upgrade
    from api.services.auth import create_key

    settings = _settings(data_dir)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        raw, _ = create_key(session, project, name=name, is_admin=admin)
    typer.echo(raw)


def _open(data_dir: Path | None):
    from api.core.db.session import session_scope
    from api.core.migrate import upgrade

    settings = _settings(data_dir)
    upgrade(settings.database_url)
    return session_scope(settings.database_url)


def keys_list(
    project: Annotated[str | None, typer.Option(help="Only this project's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """List API keys (their first characters only), revoked ones included."""
    from api.services import auth

    with _open(data_dir) as session:
        rows = [auth.to_public(key, name) for key, name in auth.list_keys(session)]
    for row in rows:
        if project is not None and row.project != project:
            continue
        if as_json:
            typer.echo(row.model_dump_json())
        else:
            state = "revoked" if row.revoked_at else ("admin" if row.is_admin else "active")
            typer.echo(f"{row.id}\t{row.redacted_value}\t{row.project}\t{state}\t{row.name}")


def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id (key-...) or its first characters (sk-esft-...).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key: its next request is answered 401."""
    from api.core.errors import ServiceError
    from api.services import auth

    try:
        with _open(data_dir) as session:
            row = auth.revoke_key(session, auth.find_key(session, key))
            typer.echo(f"revoked {row.id} ({row.prefix}...)")
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def limits_set(
    values: Annotated[list[str], typer.Argument(help="name=value pairs (value 'default' drops the override).")],
    project: Annotated[str | None, typer.Option(help="Set for this project (its name or id).")] = None,
    key: Annotated[str | None, typer.Option(help="Set for this key (id or first characters); wins over the project.")]
    = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Override rate limits and quotas: requests_per_second, burst, concurrent_devices, stored_bytes, pinned_bytes."""
    from sqlalchemy import or_, select

    from api.core.db.models import Project
    from api.core.errors import ServiceError
    from api.services import auth

    if (project is None) == (key is None):
        typer.echo("error: give exactly one of --project or --key", err=True)
        raise typer.Exit(2)
    try:
        parsed = {name: None if value == "default" else float(value)
                  for name, _, value in (pair.partition("=") for pair in values)}  # fmt: skip
    except ValueError:
        typer.echo("error: values are numbers or 'default', e.g. requests_per_second=50", err=True)
        raise typer.Exit(2) from None
    try:
        with _open(data_dir) as session:
            if key is not None:
                target = auth.find_key(session, key)
            else:
                target = session.scalar(select(Project).where(or_(Project.name == project, Project.id == project)))
                if target is None:
                    raise ServiceError(404, f"No project named {project!r}.", code="project_not_found")
            typer.echo(json.dumps(auth.set_limits(target, parsed)))
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def openapi(
    out: Annotated[Path, typer.Option(help="Where to write the schema.")] = Path("openapi.json"),
) -> None:
    """Write the OpenAPI schema of the service (the committed openapi.json)."""
    from api.openapi import write_schema

    write_schema(out)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the service commands to an ``esft`` typer app."""
    app.command("serve")(serve)
    app.command("quickstart")(quickstart)
    app.command("openapi")(openapi)
    models = typer.Typer(help="Base models of the service.", no_args_is_help=True)
    models.command("add")(models_add)
    app.add_typer(models, name="models")
    keys = typer.Typer(help="API keys of the service.", no_args_is_help=True)
    keys.command("create")(keys_create)
    keys.command("list")(keys_list)
    keys.command("revoke")(keys_revoke)
    app.add_typer(keys, name="keys")
    limits = typer.Typer(help="Rate limits and quotas per project or key.", no_args_is_help=True)
    limits.command("set")(limits_set)
    app.add_typer(limits, name="limits")


def main() -> None:
    app = typer.Typer(name="esft-service", no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
