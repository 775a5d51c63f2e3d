"""The progress JSONL of ``esft train --progress-jsonl``: what rank 0 writes and how a follower reads it."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from esft.cli_options import cli_args, config_options
from esft.config import TrainingConfig
from esft.training.progress import ProgressEvent, ProgressFile, ProgressFileReader


def test_steps_checkpoints_and_the_end_are_records(tmp_path):
    path = tmp_path / "progress.jsonl"
    record = ProgressFile(path)
    record(ProgressEvent("scoring", 1, 2))  # other phases are not training progress
    record(ProgressEvent("training", 1, 4, loss=2.5, tokens_per_s=100.0, trained_tokens=64))
    record(ProgressEvent("training", 2, 4, loss=2.0, tokens_per_s=90.0, checkpoint="out/checkpoints/step-2"))
    record.stopped()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"step": 1, "total_steps": 4, "loss": 2.5, "tokens_per_s": 100.0, "trained_tokens": 64},
        {"step": 2, "total_steps": 4, "loss": 2.0, "tokens_per_s": 90.0},
        {"event": "checkpoint", "step": 2, "path": "out/checkpoints/step-2"},
        {"event": "stopped", "step": 2},
    ]


def test_reader_returns_each_complete_record_once(tmp_path):
    path = tmp_path / "progress.jsonl"
    reader = ProgressFileReader(path)
    assert reader.read() == []  # not written yet
    with path.open("ab") as f:
        f.write(b'{"step": 1, "total_steps": 3}\n{"step": 2, "tot')  # the second line is still being written
        f.flush()
        assert reader.read() == [{"step": 1, "total_steps": 3}]
        f.write(b'al_steps": 3}\nnot json\n[1, 2]\n{"event": "done", "step": 3}\n')
    assert reader.read() == [{"step": 2, "total_steps": 3}, {"event": "done", "step": 3}]
    assert reader.read() == []


def test_cli_args_rebuild_the_same_config():
    """The worker launches ``esft train`` with ``cli_args(config)``: the ranks must build the same config."""
    config = TrainingConfig(max_steps=7, learning_rate=3e-4, packing=False, train_shared_experts=True,
                            lr_scheduler="constant", eval_every=2, seed=5)
    built = []
    app = typer.Typer()

    @app.command()
    @config_options(training=TrainingConfig)
    def train(training: TrainingConfig) -> None:
        built.append(training)

    result = CliRunner().invoke(app, cli_args(config))
    assert result.exit_code == 0, result.output
    assert built[0].to_dict() == config.to_dict()
