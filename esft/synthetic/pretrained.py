"""The pretrained toy base model that ships with the package, so a quickstart starts from a model that knows
something (the six synthetic general skills) instead of noise, without 10-20 minutes of pretraining first.

The weights are ``esft.synthetic.pretrain.pretrain`` with the default ``PretrainConfig`` (3.7M parameters,
3000 steps), stored in bf16 to keep the package small; ``install`` writes an fp32 copy where a server
registers models. ``python scripts/pretrained_toy.py`` rebuilds them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).with_name("toy_pretrained")


def shipped_report() -> dict[str, Any]:
    """The pretraining report of the shipped weights: config, losses, general scores per skill."""
    from esft.synthetic.pretrain import REPORT_NAME

    return json.loads((SHIPPED_DIR / REPORT_NAME).read_text())


def install(out_dir: str | Path) -> Path:
    """Write the shipped toy (fp32 weights, tokenizer, pretraining report) to ``out_dir``; returns it."""
    import torch

    from esft.models.loading import load_model
    from esft.synthetic.pretrain import REPORT_NAME

    out = Path(out_dir)
    model, tokenizer = load_model(SHIPPED_DIR, dtype="float32", device="cpu")
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(SHIPPED_DIR / REPORT_NAME, out / REPORT_NAME)
    return out


def ship(pretrained_dir: str | Path) -> Path:
    """Store a ``pretrain`` output in the package as bf16 (what ``scripts/pretrained_toy.py`` calls)."""
    import torch

    from esft.models.loading import load_model
    from esft.synthetic.pretrain import REPORT_NAME

    model, tokenizer = load_model(pretrained_dir, dtype="float32", device="cpu")
    if SHIPPED_DIR.exists():
        shutil.rmtree(SHIPPED_DIR)
    model.to(torch.bfloat16).save_pretrained(SHIPPED_DIR)
    tokenizer.save_pretrained(SHIPPED_DIR)
    shutil.copyfile(Path(pretrained_dir) / REPORT_NAME, SHIPPED_DIR / REPORT_NAME)
    return SHIPPED_DIR
