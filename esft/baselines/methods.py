"""Full fine-tuning and LoRA as methods: prepare the model, train it, and report what it cost.

LoRA goes through ``peft``: rank 8 on every ``nn.Linear`` except the LM head, i.e. the attention
projections and the shared experts. transformers stores the routed experts as fused 3-D parameters
(``gate_up_proj[E, 2I, H]``), not ``nn.Linear`` modules, so they and the router stay frozen. The module
names are listed explicitly, and peft's v4-compatibility rewrite is switched off: in peft 0.21 both
``"all-linear"`` and names ending in ``down_proj`` are turned into LoRA on the fused experts and the
router (``target_parameters``), which is a different method.

>>> from esft.config import TrainingConfig
>>> report = train_baseline("fft", model, data, TrainingConfig(max_steps=2), pad_token_id=2)  # doctest: +SKIP
>>> report.trainable_parameters == report.total_parameters  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal
from unittest import mock

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


def prepare_lora(model: nn.Module, rank: int = LORA_RANK, alpha: int = LORA_ALPHA) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on all linear layers except the output head."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # optional dependency of the comparison only
        raise ConfigError("the LoRA baseline needs `peft`: pip install peft", param="method") from exc
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=linear_modules(model),
                        bias="none")
    # peft rewrites targets ending in gate_proj/up_proj/down_proj into LoRA on the fused routed experts (a
    # back-compat path for adapters trained on transformers v4 MoE layouts). That would move the shared
    # experts' LoRA onto the routed experts; the adapter here is new, so skip that rewrite.
    from peft.utils import transformers_weight_conversion

    with mock.patch.object(transformers_weight_conversion, "_convert_peft_config_moe", lambda *_: None):
        return get_peft_model(model, config)


def linear_modules(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` except the output head (``get_output_embeddings``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head]


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
