"""Path-level workflows shared by the CLI and the service's worker: score, select, train, merge, generate.

Each takes directories and files, loads what it needs, calls the library, and writes its artifact
atomically. The CLI commands and the Celery tasks are thin callers of these functions. In Python, use the
in-memory front door instead (``esft.get_esft_model``, ``esft.train``, ``ESFTModel.save_pretrained``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esft.adapters import save_merged
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.constants import ADAPTER_CONFIG_NAME, TRAIN_REPORT_NAME
from esft.data.formats import read_examples
from esft.data.tokenize import DataReport, tokenize_examples
from esft.errors import ConfigError
from esft.expert_config import ExpertConfig
from esft.io import write_json_atomic
from esft.methods import Method, get_method, load_adapter
from esft.models.identity import identity_of
from esft.models.loading import load_model
from esft.parallel.data_parallel import barrier, is_main, world
from esft.scoring.scores import ExpertScores, score_experts
from esft.selection import select_experts
from esft.training.loop import train as train_loop
from esft.training.progress import ProgressCallback, StopCallback


def _tokenized(path: str | Path, tokenizer, seq_len: int, overflow: str):
    return tokenize_examples(read_examples(path), tokenizer, seq_len=seq_len, overflow=overflow)


def score(
    model_dir: str | Path,
    data_path: str | Path,
    out_path: str | Path,
    config: ScoringConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    ep_size: int | None = None,
) -> ExpertScores:
    """Score the experts of ``model_dir`` on the task data and write the scores JSON to ``out_path``.

    Under ``torch.distributed`` the batches are sharded over the ranks and the sums reduced; rank 0 writes.
    With ``ep_size`` the model's experts are sharded over that many ranks (``esft.parallel.expert_parallel``).
    """
    config = config or ScoringConfig()
    model, tokenizer = _load(model_dir, ep_size, dtype="auto", device=_rank_device())
    examples, _ = _tokenized(data_path, tokenizer, config.seq_len, "truncate")
    scores = score_experts(model, examples, config, pad_token_id=tokenizer.pad_token_id, progress=progress)
    scores.base_model = identity_of(model.config)
    if is_main():
        scores.save(out_path)
    barrier()
    return scores


def _load(model_dir, ep_size: int | None, *, dtype: str, device: str | None):
    """The model whole on this rank's device, or with its experts sharded over ``ep_size`` ranks."""
    if ep_size is None:
        return load_model(model_dir, dtype=dtype, device=device)
    from esft.parallel.expert_parallel import load_expert_parallel

    return load_expert_parallel(model_dir, ep_size=ep_size, dtype=dtype)


def select(
    scores_path: str | Path, config: SelectionConfig | None = None, out_path: str | Path | None = None
) -> ExpertConfig:
    """Select experts from a scores file with the per-layer top-p rule; write the expert config."""
    expert_config = select_experts(ExpertScores.load(scores_path), config)
    if out_path is not None:
        expert_config.save(out_path)
    return expert_config


@dataclass
class TrainOutput:
    """What ``train`` produced: the adapter directory and the run's numbers."""

    adapter_dir: Path
    steps: int
    trained_tokens: int
    final_loss: float | None
    val_loss: float | None
    report: dict[str, Any] = field(default_factory=dict)


def _datasets(data_path, validation_path, tokenizer, config: TrainingConfig):
    """Tokenized training and validation examples (the loop holds out ``validation_split`` itself)."""
    train_data, report = _tokenized(data_path, tokenizer, config.seq_len, config.overflow)
    val_data: list = []
    if validation_path is not None:
        val_data, _ = _tokenized(validation_path, tokenizer, config.seq_len, "truncate")
    return train_data, val_data, report


def _method_config(method: Method, expert_config_path, config: TrainingConfig, options: dict[str, Any] | None):
    """The method's config: its ``options`` (rank, ...) over its defaults, with the expert config where it selects.

    ESFT's config is the expert config itself (with the training config's variant flags); ESFT-LoRA's holds it.
    """
    options = dict(options or {})
    if not method.needs_expert_config:
        if expert_config_path is not None:
            raise ConfigError(f"the {method.name} method trains no expert selection; drop the expert config "
                              "(`--expert-config`)", param="expert_config")
        return method.config_cls(**options)
    if expert_config_path is None:
        raise ConfigError(f"the {method.name} method needs an expert config (`--expert-config`; make one with "
                          "`esft select`)", param="expert_config")
    expert_config = ExpertConfig.load(expert_config_path)
    # The paper's variants can be asked for in the expert config or in the training config.
    expert_config.shared_experts |= config.train_shared_experts
    expert_config.non_expert_modules |= config.train_non_expert_modules
    if method.config_cls is None:
        return expert_config
    return method.config_cls(**options, expert_config=expert_config)


def train(
    model_dir: str | Path,
    data_path: str | Path,
    expert_config_path: str | Path | None,
    out_dir: str | Path,
    config: TrainingConfig | None = None,
    *,
    validation_path: str | Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    method: str = "esft",
    method_options: dict[str, Any] | None = None,
    ep_size: int | None = None,
) -> TrainOutput:
    """Train ``model_dir`` on ``data_path`` with ``method`` (a registered name) and write the result to ``out_dir``.

    ``out_dir`` also holds ``checkpoints/`` (for ``resume``), ``metrics.jsonl`` and ``train_report.json``.
    ESFT, ESFT-LoRA and LoRA write an adapter (``adapter_config.json`` last, so its presence means complete);
    FFT writes a whole model with its tokenizer. ``expert_config_path`` is required for the methods that train
    an expert selection (esft, esft_lora) and refused for the others; ``method_options`` are the method
    config's fields (``rank``, ``alpha``, ``train_embeddings``).
    With ``ep_size`` (ESFT only, every rank of a process group calls it) the experts are sharded over
    ``ep_size`` ranks and rank 0 still writes one ordinary adapter.

    Raises:
        ConfigError: unknown method, missing or superfluous expert config, or ``out_dir`` already finished.
    """
    config = config or TrainingConfig()
    spec = get_method(method)
    out_dir = Path(out_dir)
    if any((out_dir / name).exists() for name in (ADAPTER_CONFIG_NAME, TRAIN_REPORT_NAME)) and not resume:
        raise ConfigError(f"{out_dir} already holds a finished run; choose a new --out", param="out")
    method_config = _method_config(spec, expert_config_path, config, method_options)
    if ep_size is not None and method != "esft":
        raise ConfigError(f"`ep_size` shards the experts ESFT trains; the {method} method runs without it",
                          param="ep_size")
    model, tokenizer = _load(model_dir, ep_size, dtype=config.dtype, device=_rank_device())
    train_data, val_data, data_report = _datasets(data_path, validation_path, tokenizer, config)
    torch.manual_seed(config.seed)  # methods that initialise weights (LoRA) do it reproducibly
    started = time.perf_counter()
    if ep_size is None:
        prepared = spec.prepare(model, method_config)
    else:
        from esft.parallel.expert_parallel import get_esft_model_expert_parallel

        prepared = get_esft_model_expert_parallel(model, method_config)
    result = train_loop(prepared, train_data, config, pad_token_id=tokenizer.pad_token_id, out_dir=out_dir,
                        val_data=val_data, resume=resume, progress=progress, should_stop=should_stop)
    n_train, n_val = result.report["n_train"], result.report["n_validation"]
    report = {**result.report, "method": method, "train_seconds": round(time.perf_counter() - started, 3),
              "data": _data_report(data_report, n_train, n_val),
              "config": config.to_dict()}
    if ep_size is not None:  # rank 0 gathers the rows each rank owns and writes the one adapter
        prepared.write_files(out_dir, report)
    if is_main():  # every rank holds the same trained weights; one writes them
        write_json_atomic(out_dir / TRAIN_REPORT_NAME, report)
        if ep_size is None:
            prepared.write_files(out_dir, report)
        if spec.full_checkpoint:
            tokenizer.save_pretrained(out_dir)
    barrier()
    return TrainOutput(out_dir, result.steps, result.trained_tokens, result.final_loss, result.val_loss, report)


def _rank_device() -> str | None:
    """Under torch.distributed with GPUs, rank r trains on GPU r modulo the GPUs this host has."""
    rank, size = world()
    if size > 1 and torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return None


def _data_report(report: DataReport, n_train: int, n_val: int) -> dict[str, Any]:
    return {**report.to_dict(), "n_train": n_train, "n_validation": n_val}


def merge(model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base model + any method's result (ESFT, ESFT-LoRA, LoRA adapter) as one full checkpoint."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"{out_dir} already exists; choose a new --out for the merged model", param="out")
    model, tokenizer = load_model(model_dir, device="cpu")
    return save_merged(load_adapter(model, adapter_dir).fold(), tokenizer, out_dir)


def generate(
    model_dir: str | Path,
    prompt: str | list[dict[str, str]],
    *,
    adapter_dir: str | Path | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
) -> str:
    """Generate a reply to ``prompt`` (text or chat messages) with the base model or any method's result."""
    from esft.generation import generate_text

    model, tokenizer = load_model(model_dir)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir).fold()
    return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature)
