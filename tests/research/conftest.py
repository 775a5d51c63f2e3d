"""Fixtures for the experiment harness: one tiny pretrained toy MoE shared by the session."""

from __future__ import annotations

import pytest

from esft.synthetic.pretrain import PretrainConfig

TINY = PretrainConfig(
    layers=2,
    hidden=32,
    experts=8,
    top_k=2,
    shared_experts=1,
    n_group=1,
    topk_group=1,
    steps=6,
    batch_size=8,
    warmup_steps=2,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A pretrained (6 steps) tiny DeepSeek-V2 toy with the character tokenizer."""
    from esft.synthetic.pretrain import pretrain

    out = tmp_path_factory.mktemp("exp") / "toy"
    pretrain(out, TINY, log=lambda _: None)
    return out
