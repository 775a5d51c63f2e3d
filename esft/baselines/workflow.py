"""Path-level FFT / LoRA training, the twin of ``esft.workflows.train``: so users compare methods on their data.

FFT writes a full ``save_pretrained`` checkpoint; LoRA writes a peft adapter directory (``adapter_config.json``
+ ``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained``). Both write
``train_report.json`` with the same fields, plus the validation loss when validation data is given.

>>> report = train_method("lora", "toy", "task.jsonl", "out/lora", TrainingConfig(max_steps=100))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esft.baselines.methods import BaselineMethod, train_baseline
from esft.config import TrainingConfig
from esft.constants import TRAIN_REPORT_NAME
from esft.data.formats import read_examples
from esft.data.tokenize import tokenize_examples
from esft.errors import ConfigError
from esft.io import write_json_atomic
from esft.training.loop import evaluate
from esft.workflows import load_model


def train_method(
    method: BaselineMethod,
    model_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    config: TrainingConfig | None = None,
    *,
    validation_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model_dir`` on ``data_path`` with full fine-tuning or LoRA and save the result to ``out_dir``.

    Args:
        method: ``"fft"`` or ``"lora"``.
        model_dir: a local transformers model directory (with its tokenizer).
        data_path: JSONL training data in any format ``esft`` accepts.
        out_dir: new directory for the trained weights and ``train_report.json``.
        config: step budget, batch size, learning rate, schedule and seed (as for ESFT).
        validation_path: optional JSONL; its answer-token loss is reported.

    Returns:
        The report written to ``train_report.json``.

    Raises:
        ConfigError: ``out_dir`` already holds a report, or the method is unknown.
    """
    config = config or TrainingConfig()
    out = Path(out_dir)
    if (out / TRAIN_REPORT_NAME).exists():
        raise ConfigError(f"{out} already holds a finished run; choose a new --out", param="out")
    model, tokenizer = load_model(model_dir, dtype=config.dtype)
    train_data, data_report = tokenize_examples(read_examples(data_path), tokenizer, seq_len=config.seq_len,
                                                overflow=config.overflow)
    trained, report = train_baseline(method, model, train_data, config, pad_token_id=tokenizer.pad_token_id)
    result = {**report.to_dict(), "data": data_report.to_dict(), "config": config.to_dict()}
    if validation_path is not None:
        val_data, _ = tokenize_examples(read_examples(validation_path), tokenizer, seq_len=config.seq_len,
                                        overflow="truncate")
        result["val_loss"] = evaluate(trained, val_data, config.batch_size, tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out)
    if method == "fft":
        tokenizer.save_pretrained(out)
    write_json_atomic(out / TRAIN_REPORT_NAME, result)
    return result
