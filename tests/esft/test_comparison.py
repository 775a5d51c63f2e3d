"""Method comparison: winners per column over whatever metrics the results carry, Markdown + PNG, and
`esft compare` running several methods on the same data and budget."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from esft.cli import app
from esft.comparison import REPORT_JSON, REPORT_MD, REPORT_PNG, build_report, to_markdown, write_report

RESULTS = [
    {"method": "esft", "task": {"exact_match": 0.5, "chrf": 40.0}, "retention": {"general_ratio": 0.99},
     "adapter_bytes": 10_000, "optimizer_state_bytes": 80_000, "train_seconds": 3.0},
    {"method": "fft", "task": {"exact_match": 0.75}, "retention": {"general_ratio": 0.6},
     "adapter_bytes": 1_000_000, "optimizer_state_bytes": 8_000_000, "train_seconds": 3.0},
]


def test_winner_per_column_over_any_metric():
    report = build_report(RESULTS)
    names = [c["name"] for c in report["columns"]]
    assert names == ["task.chrf", "task.exact_match", "retention.general_ratio", "adapter_bytes",
                     "optimizer_state_bytes", "train_seconds"]
    assert report["winners"] == {"task.chrf": ["esft"], "task.exact_match": ["fft"],
                                 "retention.general_ratio": ["esft"], "adapter_bytes": ["esft"],
                                 "optimizer_state_bytes": ["esft"], "train_seconds": ["esft", "fft"]}
    assert report["rows"][1]["values"]["task.chrf"] is None  # a metric one method lacks is blank, not zero
    markdown = to_markdown(report)
    assert "| fft | - | **0.75** |" in markdown and "**9.8 KiB**" in markdown


def test_report_files(tmp_path):
    write_report(RESULTS, tmp_path, base={"task": {"exact_match": 0.0}})
    assert json.loads((tmp_path / REPORT_JSON).read_text())["base"]["task"]["exact_match"] == 0.0
    assert (tmp_path / REPORT_PNG).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / REPORT_MD).read_text().startswith("# Method comparison")


def test_esft_compare_runs_each_method_with_the_same_budget(model_dirs, chat_data, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--model", str(model_dirs("qwen3_moe")), "--data", str(chat_data), "--out", str(out),
            "--methods", "esft_lora,lora", "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--seq-len", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["methods"] == ["esft_lora", "lora"] and report["experts_selected"] > 0
    for row in report["rows"]:
        assert row["values"]["adapter_bytes"] > 0 and row["values"]["optimizer_state_bytes"] > 0
        assert 0 <= row["values"]["task.exact_match"] <= 1
    for name in ("esft_lora", "lora"):
        assert json.loads((out / name / "train_report.json").read_text())["steps"] == 2
