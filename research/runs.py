"""One fine-tuning run of the comparison: a method, a task, a learning rate and a seed, trained and evaluated.

``run_job`` is a top-level function of picklable arguments so the comparison can fan runs out to worker
processes. Every method is prepared by its folder in ``esft.methods`` and trained by the library's one
loop (``esft.train``), with the same batches, optimizer and schedule.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from esft.config import TrainingConfig
from esft.evaluation import EvalResult, exact_match, tokenize_rows
from esft.expert_config import ExpertConfig
from esft.generation import stop_token_ids
from esft.methods import get_model
from esft.models.loading import load_model
from esft.synthetic.tasks import TASKS, general_eval_rows, task_splits
from esft.training.loop import train

MethodKind = Literal["base", "esft", "fft", "lora"]


@dataclass(frozen=True)
class Method:
    """A fine-tuning method of the comparison and its learning-rate grid."""

    name: str
    kind: MethodKind
    learning_rates: tuple[float, ...] = ()
    score_function: str = "token"
    top_p: float = 0.2
    response_only: bool = False  # score experts on answer tokens only
    random_experts: bool = False  # same per-layer counts as esft-token, random ids
    shared_experts: bool = False  # paper Table 3: also train the shared experts
    non_expert_modules: bool = False  # paper Table 3: also train attention, norms, router, embeddings

    @property
    def selection_key(self) -> str:
        """Which expert selection the method trains (``"token/all"``, ``"gate/answer"`` ...)."""
        return f"{self.score_function}/{'answer' if self.response_only else 'all'}"


@dataclass(frozen=True)
class Sizes:
    """Examples per split, and general-evaluation rows per general task."""

    n_train: int = 2400
    n_val: int = 200
    n_test: int = 300
    n_general: int = 100


@dataclass(frozen=True)
class Job:
    """Everything one run needs; picklable."""

    model_dir: str
    method: Method
    task: str
    learning_rate: float
    seed: int
    steps: int
    batch_size: int
    sizes: Sizes
    experts: dict[int, list[int]] = field(default_factory=dict)
    threads: int = 1


@functools.lru_cache(maxsize=8)
def _task_data(model_dir: str, task: str, sizes: Sizes) -> dict[str, Any]:
    """Tokenized splits of ``task`` and the general sets (cached per worker process)."""
    _, tokenizer = load_model(model_dir, device="cpu")
    splits = task_splits(task, sizes.n_train, sizes.n_val, sizes.n_test)
    general = {name: tokenize_rows(rows, tokenizer) for name, rows in general_eval_rows(sizes.n_general).items()}
    return {"train": tokenize_rows(splits.train, tokenizer), "validation": tokenize_rows(splits.validation, tokenizer),
            "test": tokenize_rows(splits.test, tokenizer), "general": general,
            "pad": tokenizer.pad_token_id, "stop": sorted(stop_token_ids(tokenizer))}


def _rss_kib(field_name: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> int:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS in KiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss_kib("VmRSS")


def _method_config(job: Job) -> ExpertConfig | None:
    """ESFT's expert config for the job (None: the method's default config)."""
    m = job.method
    if m.kind != "esft":
        return None
    return ExpertConfig(experts={k: list(v) for k, v in job.experts.items()},
                        shared_experts=m.shared_experts, non_expert_modules=m.non_expert_modules)


def _train(model: nn.Module, job: Job, data: dict) -> tuple[nn.Module, dict]:
    config = TrainingConfig(max_steps=job.steps, batch_size=job.batch_size, learning_rate=job.learning_rate,
                            warmup_ratio=0.1, lr_scheduler="cosine", seed=job.seed, seq_len=256)
    total = sum(p.numel() for p in model.parameters())
    torch.manual_seed(job.seed)  # LoRA initialises its matrices when it wraps the model
    prepared = get_model(job.method.kind, model, _method_config(job))
    start = time.perf_counter()
    result = train(prepared, data["train"], config, pad_token_id=data["pad"])
    seconds = time.perf_counter() - start
    trainable = prepared.trainable_parameters()
    report = {"final_loss": result.final_loss, "train_seconds": seconds,
              "trainable_parameters": sum(p.numel() for p in trainable.values()), "total_parameters": total,
              # what must be stored per task: the whole model (FFT), the LoRA matrices or the expert rows
              "adapter_bytes": sum(p.numel() * p.element_size() for p in trainable.values()),
              "optimizer_state_bytes": int(result.report["optimizer_state_bytes"])}
    if job.method.kind == "esft":
        report["n_experts"] = prepared.config.n_selected
    return prepared.model, report


def _evaluate(model: nn.Module, data: dict, task: str) -> dict[str, Any]:
    def em(rows) -> EvalResult:
        return exact_match(model, rows, pad_id=data["pad"], stop_ids=data["stop"])

    general = {name: em(rows).accuracy for name, rows in data["general"].items()}
    # General ability is what the task does not train: a task's own skill (e.g. `reverse`) is left out.
    counted = [value for name, value in general.items() if name != TASKS[task].skill]
    val, test = em(data["validation"]), em(data["test"])
    return {"val_accuracy": val.accuracy, "val_loss": val.loss, "test_accuracy": test.accuracy,
            "test_loss": test.loss, "general": general, "general_mean": sum(counted) / len(counted)}


def run_job(job: Job) -> dict[str, Any]:
    """Train (unless the method is ``base``) and evaluate one run; returns a JSON-ready dict."""
    torch.set_num_threads(job.threads)
    data = _task_data(job.model_dir, job.task, job.sizes)
    model, _ = load_model(job.model_dir, dtype="float32", device="cpu")
    model.set_experts_implementation("grouped_mm")  # the fused kernel; the library's ESFT split uses it too
    rss_before = _reset_peak_rss()
    trained, report = (model, {}) if job.method.kind == "base" else _train(model, job, data)
    report["peak_rss_delta_bytes"] = max(0, _rss_kib("VmHWM") - rss_before) * 1024
    return {"method": job.method.name, "task": job.task, "learning_rate": job.learning_rate, "seed": job.seed,
            **report, **_evaluate(trained, data, job.task)}
