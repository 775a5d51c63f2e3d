"""FFTModel: full fine-tuning as a method (every parameter trains); saves and loads a whole transformers model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from esft.constants import FFT_CONFIG_NAME
from esft.io import write_directory_atomic, write_json_atomic
from esft.methods.fft.config import FFTConfig


@dataclass
class FFTModel:
    """A model prepared for full fine-tuning.

    Saving writes the whole model with transformers' ``save_pretrained`` (``config.json`` + weights), which
    plain ``AutoModelForCausalLM.from_pretrained`` loads; ``from_pretrained(base, dir)`` copies those weights
    into ``base``. Checkpoints hold every parameter plus AdamW's two moments: three times the model.

    >>> from esft.models.toy import toy_model
    >>> fft_model = get_fft_model(toy_model("qwen3_moe", layers=1, experts=4))
    >>> len(fft_model.trainable_parameters()) == len(list(fft_model.model.parameters()))
    True
    """

    model: nn.Module
    config: FFTConfig = field(default_factory=FFTConfig)

    method = "fft"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter with ``requires_grad`` (tied weights once, under their first name)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "train_embeddings": self.config.train_embeddings}

    def write_files(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the whole model into an existing ``directory``, then this method's config."""
        self.model.save_pretrained(directory)
        write_json_atomic(Path(directory) / FFT_CONFIG_NAME, {**self.describe(), "training": metadata or {}})

    def save_pretrained(self, out_dir: str | Path, *, metadata: dict | None = None, overwrite: bool = False) -> Path:
        """Write the model atomically to a new ``out_dir``."""
        return write_directory_atomic(out_dir, lambda tmp: self.write_files(tmp, metadata), overwrite=overwrite)

    def fold(self) -> nn.Module:
        """The model itself (nothing to fold)."""
        return self.model

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, model_dir: str | Path) -> FFTModel:
        """``base_model`` with the weights saved in ``model_dir`` copied in (same architecture required)."""
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(model_dir, dtype=base_model.dtype, local_files_only=True)
        base_model.load_state_dict(saved.state_dict())
        return cls(base_model, FFTConfig())


def get_fft_model(model: nn.Module, config: FFTConfig | None = None) -> FFTModel:
    """Prepare ``model`` for full fine-tuning: every parameter trains (in place).

    Args:
        model: a transformers causal LM.
        config: ``train_embeddings=False`` freezes the input embeddings and the output head.
    """
    config = config or FFTConfig()
    model.requires_grad_(True)
    if not config.train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                module.requires_grad_(False)
    return FFTModel(model, config)
