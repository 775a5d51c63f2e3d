"""Pipeline steps: job row → esft call → artifacts in the job's folder. Each skips if its artifact exists.

A step returns the job fields to set when it finishes (the runner writes them under the lease), raises
``StepFailed`` for a user-facing failure, or lets ``Cancelled`` / ``TrainingCancelled`` through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from api.core import runs
from api.core.artifacts import EXPERT_CONFIG, METRICS_CSV, SCORES, TRAIN_DIR, TRAIN_REPORT, VALIDATION_REPORT, job_key
from api.core.db.models import Job
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.services import job_options
from esft.config import DataFacts, ScoringConfig, SelectionConfig, TrainingConfig
from esft.constants import ADAPTER_CONFIG_NAME, CHECKPOINTS_DIR
from esft.data.formats import LineLimits
from esft.data.validation import validate_jsonl
from esft.errors import ESFTError
from esft.io import sha256_file, write_json_atomic
from esft.methods import Method, get_method
from worker.evaluation import GENERAL_FILE_PREFIX, evaluate
from worker.library import Library
from worker.progress import Cancelled, ProgressReporter

EXPERT_SLOT_METHODS = ("esft", "esft_lora")  # results served through the base model's expert slots
MERGED_DIR = "merged"


class StepFailed(ESFTError):
    """A failure the user must fix; becomes the job's ``error`` (the library's code/message/param base)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message, code=code, param=param)


@dataclass
class StepContext:
    job: Job
    settings: Settings
    storage: LocalStorage
    lib: Library
    work: Path
    model_dir: Path
    training_path: Path
    validation_path: Path | None
    reporter: ProgressReporter | None
    should_stop: Callable[[], bool]
    log: Callable[..., None]
    token: int  # the lease generation this step runs under (fencing token)
    general_files: list[Any] = field(default_factory=list)  # esft.evaluation.retention.GeneralFile, suite first


def _model_facts(model_dir: Path) -> tuple[Callable[[str], int] | None, int | None]:
    """A torch-free token counter from ``tokenizer.json`` and the context length from ``config.json``."""
    count = None
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        count = lambda text: len(tokenizer.encode(text).ids)  # noqa: E731
    config = json.loads((model_dir / "config.json").read_text())
    return count, config.get("max_position_embeddings")


def _check_report(report: dict, param: str) -> None:
    blocking = {code: n for code, n in report["error_counts"].items() if code != "too_many_tokens"}
    if not blocking:
        return
    first = [e for e in report["errors"] if e["code"] != "too_many_tokens"][:3]
    detail = "; ".join(
        f"line {e['line']}: {e['code']}: {e['message']}" if e["line"] else f"{e['code']}: {e['message']}" for e in first
    )
    counts = ", ".join(f"{code} x{n}" for code, n in sorted(blocking.items()))
    raise StepFailed("invalid_file", f"The {param} has problems ({counts}). {detail}", param=param)


def validate(ctx: StepContext) -> dict[str, Any]:
    """Validate the files against the base model (tokens, context) and resolve ``auto`` hyperparameters."""
    out = ctx.work / VALIDATION_REPORT
    if out.exists():
        return {"hyperparameters": json.loads(out.read_text())["hyperparameters"]}
    count, context = _model_facts(ctx.model_dir)
    reports = {}
    general = [(f"general_files[{i}].file", f.path, 1) for i, f in enumerate(ctx.general_files)
               if f.name.startswith(GENERAL_FILE_PREFIX)]
    for param, path, minimum in (
        ("training_file", ctx.training_path, ctx.settings.min_examples),
        ("validation_file", ctx.validation_path, 1),
        *general,
    ):
        if path is None:
            continue
        report = validate_jsonl(
            path,
            count_tokens=count,
            max_context=context if count else None,
            max_errors=ctx.settings.max_report_errors,
            min_examples=minimum,
            limits=LineLimits(ctx.settings.max_line_bytes, ctx.settings.max_json_depth),
        ).to_dict()
        _check_report(report, param)
        if report["n_over_context"]:
            ctx.log(
                f"{report['n_over_context']} example(s) in the {param} exceed the context of {context} "
                "tokens and will be truncated.",
                level="warn",
            )
        reports[param] = report
    train = reports["training_file"]
    stats = train["token_stats"] or {}
    facts = DataFacts(train["n_examples"], max_tokens=stats.get("max"), max_context=context)
    values = job_options.spec_values(ctx.job.method, ctx.job.seed)
    resolved = job_options.resolve(values, facts, ctx.settings, ctx.job.method.get("type", "esft"))
    write_json_atomic(out, {"reports": reports, "hyperparameters": resolved})
    ctx.log(f"Files validated: {train['n_examples']} training examples; {resolved['total_steps']} steps planned.")
    return {"hyperparameters": resolved}


def job_method(job: Job) -> Method:
    """The library method a job trains (``supervised`` is ESFT with its defaults)."""
    kind = job.method.get("type", "esft")
    return get_method("esft" if kind == "supervised" else kind)


def score(ctx: StepContext) -> dict[str, Any]:
    out = ctx.work / SCORES
    method = job_method(ctx.job)
    if not method.needs_expert_config:
        ctx.log(f"Expert scoring and selection skipped: the {method.name} method trains no expert selection.")
        return {}
    if not out.exists():
        config = job_options.config_for(ScoringConfig, ctx.job.hyperparameters)
        ctx.lib.score(ctx.model_dir, ctx.training_path, out, config, progress=ctx.reporter)
        ctx.log("Expert scores computed.")
    return {}


def select(ctx: StepContext) -> dict[str, Any]:
    out = ctx.work / EXPERT_CONFIG
    if job_method(ctx.job).needs_expert_config and not out.exists():
        ctx.lib.select(ctx.work / SCORES, job_options.config_for(SelectionConfig, ctx.job.hyperparameters), out)
        experts = json.loads(out.read_text()).get("experts", {})
        chosen = {layer: ids for layer, ids in experts.items()}
        total = sum(len(ids) for ids in chosen.values())
        ctx.log(f"Selected {total} experts across {len(chosen)} MoE layers.", data={"experts": chosen})
    return {}


def has_checkpoint(train_dir: Path) -> bool:
    folder = train_dir / CHECKPOINTS_DIR
    return folder.is_dir() and any(folder.iterdir())


def train(ctx: StepContext) -> dict[str, Any]:
    train_dir = ctx.work / TRAIN_DIR
    report_path = train_dir / TRAIN_REPORT
    method = job_method(ctx.job)
    marker = "config.json" if method.full_checkpoint else ADAPTER_CONFIG_NAME  # written last
    if (train_dir / marker).exists() and report_path.exists():
        return {"trained_tokens": json.loads(report_path.read_text()).get("trained_tokens")}
    config = job_options.config_for(TrainingConfig, ctx.job.hyperparameters)
    options = job_options.worker_values(method.config_cls, ctx.job.hyperparameters) if method.config_cls else {}
    resume = has_checkpoint(train_dir)
    if resume:
        ctx.log("Resuming training from the latest checkpoint.")
    gpus = (ctx.job.resources or {}).get("gpus", 1)
    if gpus > 1:
        return train_on_devices(ctx, gpus, config, resume)
    result = ctx.lib.train(
        ctx.model_dir,
        ctx.training_path,
        ctx.work / EXPERT_CONFIG if method.needs_expert_config else None,
        train_dir,
        config,
        validation_path=ctx.validation_path,
        resume=resume,
        progress=ctx.reporter,
        should_stop=ctx.should_stop,
        method=method.name,
        method_options=options,
    )
    ctx.log(f"Training finished: {result.steps} steps, final loss {result.final_loss}.")
    return {"trained_tokens": result.trained_tokens}


def train_on_devices(ctx: StepContext, gpus: int, config: TrainingConfig, resume: bool) -> dict[str, Any]:
    """``train`` in ``gpus`` processes (torchrun, one per device): launched, streamed and stopped by the step."""
    from worker import distributed_launch

    train_dir = ctx.work / TRAIN_DIR
    try:
        launch = distributed_launch.train_launch(
            gpus, ctx.model_dir, ctx.training_path, ctx.work / EXPERT_CONFIG, train_dir, config,
            validation_path=ctx.validation_path, resume=resume, ep_size=(ctx.job.resources or {}).get("ep_size"),
        )  # fmt: skip
        report = distributed_launch.run(
            launch,
            reporter=ctx.reporter,
            should_stop=ctx.should_stop,
            grace_s=ctx.settings.stop_grace_s,
            on_start=lambda pid: ctx.log(
                f"Training in {gpus} processes (torchrun, process group {pid}).", data={"pgid": pid, "nproc": gpus}
            ),
        )
    except distributed_launch.LaunchFailed as exc:
        raise StepFailed("training_failed", exc.message, param=exc.param) from None
    ctx.log(f"Training finished: {report['steps']} steps, final loss {report['final_loss']}.")
    return {"trained_tokens": report.get("trained_tokens")}


def _result_file(session, ctx: StepContext) -> list[str]:
    """Expose ``metrics.csv`` as a ``fine-tune-results`` file, as OpenAI's ``result_files`` do."""
    from sqlalchemy import select

    from api.core.db.models import File
    from api.services.common import new_id

    key = f"{job_key(ctx.job.id)}/{METRICS_CSV}"
    path = ctx.storage.path(key)
    if not path.is_file():
        return []
    existing = session.scalar(select(File).where(File.storage_key == key))
    if existing is None:
        existing = File(
            id=new_id("file"),
            project_id=ctx.job.project_id,
            filename=f"{ctx.job.id}-{METRICS_CSV}",
            purpose="fine-tune-results",
            bytes=path.stat().st_size,
            sha256=sha256_file(path),
            status="processed",
            storage_key=key,
        )
        session.add(existing)
    return [existing.id]


def _servable(ctx: StepContext) -> Path:
    """What the registry stores: the expert adapter (ESFT, ESFT-LoRA), else the whole model with the result merged.

    Methods that change dense weights (FFT, LoRA) are served as a model of their own: a full copy.
    """
    train_dir, method = ctx.work / TRAIN_DIR, job_method(ctx.job)
    if method.name in EXPERT_SLOT_METHODS or method.full_checkpoint:
        return train_dir
    merged = ctx.work / MERGED_DIR
    if not merged.exists():
        ctx.lib.merge(ctx.model_dir, train_dir, merged)
        ctx.log(f"The {method.name} result is merged into a full copy of the model for serving.")
    return merged


def register(ctx: StepContext) -> dict[str, Any]:
    from api.core.db.session import session_scope
    from api.services.jobs import adapter_name
    from api.services.registry import register_adapter

    name = adapter_name(ctx.job)
    source = _servable(ctx)
    fence = partial(runs.fenced, job_id=ctx.job.id, token=ctx.token)
    with session_scope(ctx.settings.database_url) as session:
        if register_adapter(session, ctx.storage, ctx.job, name, source, fence=fence) is None:
            raise Cancelled(f"job {ctx.job.id}: not registered (cancelled, or another worker holds it)")
        result_files = _result_file(session, ctx)
    ctx.log(f"New fine-tuned model created: {name}")
    return {"fine_tuned_model": name, "result_files": result_files}


STEP_FUNCTIONS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "validate": validate,
    "score": score,
    "select": select,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}
