"""The pictures: each is a real PNG, and the retention bars label job files by their short names."""

from __future__ import annotations

from esft.plotting import _short_labels, plot_retention


def _report() -> dict:
    files = [{"name": "job:general-add.jsonl#0", "base": 50.0, "adapter": 25.0, "ratio": 0.5},
             {"name": "job:general-upper.jsonl#1", "base": 100.0, "adapter": 100.0, "ratio": 1.0}]
    return {"files": files, "average": {"base": 75.0, "adapter": 62.5, "ratio": 62.5 / 75.0}}


def test_retention_png_is_written(tmp_path):
    out = plot_retention(_report(), tmp_path / "retention.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_drop_extension_and_index_only_while_unique():
    assert _short_labels(["job:general-add.jsonl#0", "arith", "average"]) == ["job:general-add", "arith", "average"]
    assert _short_labels(["job:a.jsonl#0", "job:a.jsonl#1"]) == ["job:a.jsonl#0", "job:a.jsonl#1"]
