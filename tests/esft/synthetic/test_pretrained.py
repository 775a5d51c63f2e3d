"""The pretrained toy shipped with the package: what the default pretraining made, and it still knows its skills."""

from __future__ import annotations

import torch

from esft.models.loading import load_model
from esft.synthetic import pretrained
from esft.synthetic.pretrain import PretrainConfig, general_scores


def test_the_shipped_weights_are_the_default_pretraining():
    report = pretrained.shipped_report()
    assert report["config_key"] == PretrainConfig().key()  # rebuilt by scripts/pretrained_toy.py when it changes
    assert report["general_mean"] > 0.5


def test_install_gives_an_fp32_model_that_knows_its_general_skills(tmp_path):
    model, tokenizer = load_model(pretrained.install(tmp_path / "toy"), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    scores = general_scores(model.eval(), tokenizer, n_per_task=10)  # bf16-rounded weights, 60 held-out rows
    assert sum(scores.values()) / len(scores) > 0.5 and scores["capital"] > 0.8  # a random init scores ~0
