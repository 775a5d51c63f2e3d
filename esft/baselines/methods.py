"""Full fine-tuning and LoRA as methods: prepare the model, train it, and report what it cost.

LoRA goes through ``peft``'s public configuration only: rank 8 on the attention projections, named
explicitly in ``target_modules``. transformers stores the routed experts as fused 3-D parameters
(``gate_up_proj[E, 2I, H]``), not ``nn.Linear`` modules; peft reaches them only through
``target_parameters`` (one LoRA per expert, on every expert of the parameter), which ``prepare_lora`` takes
as an explicit option. Dense and shared-expert MLPs are not targeted by name: peft 0.21 rewrites targets
named ``gate_proj``/``up_proj``/``down_proj`` in MoE models onto the fused experts, so asking for them would
silently train a different method (``prepare_lora`` checks that peft kept the targets it was given).

>>> from esft.config import TrainingConfig
>>> report = train_baseline("fft", model, data, TrainingConfig(max_steps=2), pad_token_id=2)  # doctest: +SKIP
>>> report.trainable_parameters == report.total_parameters  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from esft.baselines.loop import train_parameters
from esft.config import TrainingConfig
from esft.data.tokenize import TokenizedExample
from esft.errors import ConfigError

BaselineMethod = Literal["fft", "lora"]
LORA_RANK = 8
LORA_ALPHA = 16


@dataclass
class BaselineReport:
    """Numbers comparable with an ESFT train report."""

    method: str
    steps: int
    final_loss: float
    train_seconds: float
    trainable_parameters: int
    total_parameters: int
    adapter_bytes: int  # what must be stored per task: the whole model (FFT) or the LoRA weights
    optimizer_state_bytes: int  # AdamW moments of the trainable parameters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_fft(model: nn.Module) -> nn.Module:
    """Every parameter trains (embeddings, attention, router, all experts, head)."""
    return model.requires_grad_(True)


def prepare_lora(
    model: nn.Module,
    rank: int = LORA_RANK,
    alpha: int = LORA_ALPHA,
    *,
    target_modules: list[str] | None = None,
    target_parameters: list[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on ``target_modules`` (default: the attention projections).

    ``target_parameters`` names fused expert parameters (e.g. ``["mlp.experts.down_proj"]``) for LoRA on
    every routed expert; peft requires ``lora_dropout=0`` there, which is what this uses anyway.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # optional dependency of the comparison only
        raise ConfigError("the LoRA method needs `peft`: pip install peft", param="method") from exc
    modules = list(target_modules) if target_modules is not None else attention_modules(model)
    if not modules and not target_parameters:
        raise ConfigError("LoRA found no attention projections to target; pass `target_modules`", param="method")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=modules,
                        target_parameters=list(target_parameters or []) or None)
    wrapped = get_peft_model(model, config)
    kept = wrapped.peft_config["default"]
    if set(kept.target_parameters or []) != set(target_parameters or []):
        raise ConfigError(
            f"peft moved LoRA targets {sorted(set(modules) - set(kept.target_modules or []))} onto fused experts "
            f"({sorted(kept.target_parameters or [])}); target attention modules or name `target_parameters`",
            param="method",
        )
    return wrapped


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules inside attention (a path component containing ``attn``/``attention``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any("attn" in part or "attention" in part for part in name.split("."))
    ]


def _adapter_bytes(method: str, model: nn.Module) -> int:
    if method == "fft":
        return sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)


def train_baseline(
    method: BaselineMethod,
    model: nn.Module,
    train_data: Sequence[TokenizedExample],
    config: TrainingConfig,
    *,
    pad_token_id: int,
) -> tuple[nn.Module, BaselineReport]:
    """Train ``model`` with full fine-tuning or LoRA under the same loop and schedule as ESFT.

    Args:
        method: ``"fft"`` or ``"lora"``.
        model: the base model (modified in place; LoRA wraps it).
        train_data: tokenized examples.
        config: step budget, batch size, learning rate, schedule and seed.
        pad_token_id: padding id.

    Returns:
        The trained model (a ``PeftModel`` for LoRA, which forwards like the base) and its report.

    Raises:
        ConfigError: unknown method, or LoRA without ``peft`` installed.
    """
    if method not in ("fft", "lora"):
        raise ConfigError(f"`method` must be 'fft' or 'lora', got {method!r}", param="method")
    total = sum(p.numel() for p in model.parameters())
    model = prepare_fft(model) if method == "fft" else prepare_lora(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train_parameters(model, train_data, config, pad_token_id=pad_token_id)
    report = BaselineReport(method, result.steps, result.final_loss, result.seconds, trainable, total,
                            _adapter_bytes(method, model), result.optimizer_state_bytes)
    return model, report
