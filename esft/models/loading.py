"""Loading a local causal LM and its tokenizer: never from a hub, on the device asked for."""

from __future__ import annotations

from pathlib import Path

import torch

from esft.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(model_dir: str | Path, *, dtype: str = "auto", device: str | None = None):
    """Load a local causal LM and its tokenizer (never from a hub). Returns ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a saved model directory (no config.json)", param="model")
    torch_dtype = _DTYPES.get(dtype, "auto")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer
