"""The `esft` command: the README's chain works, and bad input gives a clear error with nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from esft.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_readme_chain_toy_score_select_train_merge_generate(tmp_path, chat_data):
    """Runs the real console entry point in a subprocess, as the README shows."""

    def esft(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "esft.cli", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    esft("toy-model", "toy", "--family", "deepseek_v2", "--layers", "2", "--experts", "8", "--top-k", "2")
    esft("score", "--model", "toy", "--data", chat_data, "--out", "scores.json", "--response-only")
    esft(
        "select",
        "--scores",
        "scores.json",
        "--score-function",
        "token",
        "--top-p",
        "0.2",
        "--out",
        "experts.json",
    )
    esft(
        "train",
        "--model",
        "toy",
        "--data",
        chat_data,
        "--expert-config",
        "experts.json",
        "--out",
        "adapter",
        "--max-steps",
        "3",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
        "--seq-len",
        "128",
    )
    esft("merge", "--model", "toy", "--adapter", "adapter", "--out", "merged")
    esft("plot", "--scores", "scores.json", "--expert-config", "experts.json", "--out", "scores.png")
    out = esft(
        "generate",
        "--model",
        "toy",
        "--adapter",
        "adapter",
        "--prompt",
        "add 1 and 4",
        "--max-new-tokens",
        "4",
    )
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "merged" / "config.json").is_file()
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert isinstance(out.stdout, str)


@pytest.mark.parametrize(
    "line,code",
    [
        ('{"messages": [{"role": "robot", "content": "x"}]}', "robot"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "assistant"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}', "content"),
        ('{"messages": [ not json', "JSON"),
    ],
)
def test_bad_data_is_reported_with_its_line_and_no_output(line, code, tmp_path, model_dirs):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    data.write_text(good + "\n" + good + "\n" + line + "\n")
    result = _run("score", "--model", model_dirs("qwen3_moe"), "--data", data, "--out", tmp_path / "s.json")
    assert result.exit_code == 2
    assert "line 3" in result.output and code in result.output
    assert not (tmp_path / "s.json").exists()


def test_empty_data_is_rejected(tmp_path, model_dirs):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n\n")
    result = _run("score", "--model", model_dirs("qwen3_moe"), "--data", data, "--out", tmp_path / "s.json")
    assert result.exit_code == 2 and "empty" in result.output.lower()
    assert not (tmp_path / "s.json").exists()


def test_non_moe_model_names_the_family(tmp_path, chat_data):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from esft.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    result = _run("score", "--model", tmp_path / "llama", "--data", chat_data, "--out", tmp_path / "s.json")
    assert result.exit_code == 2 and "'llama'" in result.output and "Mixture-of-Experts" in result.output
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("top_p", ["0", "1.5", "-0.2"])
def test_top_p_outside_range_is_rejected(top_p, tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps({"layers": {"0": {"token": [0.5, 0.5], "gate": [0.5, 0.5], "gate_raw": [0.4, 0.4], "top_k": 1}}})
    )
    result = _run("select", "--scores", scores, "--top-p", top_p, "--out", tmp_path / "e.json")
    assert result.exit_code == 2 and "--top-p" in result.output and "must be in (0, 1]" in result.output
    assert not (tmp_path / "e.json").exists()
    assert not (tmp_path / "e.json").exists()


def test_failed_training_leaves_no_adapter(tmp_path, model_dirs, chat_data):
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"experts": {"0": [99]}, "shared_experts": False, "non_expert_modules": False}))
    result = _run(
        "train",
        "--model",
        model_dirs("mixtral"),
        "--data",
        chat_data,
        "--expert-config",
        experts,
        "--out",
        tmp_path / "adapter",
        "--max-steps",
        "1",
    )
    assert result.exit_code == 2 and "layer 0 has experts 0..7" in result.output
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_baseline_methods_train_through_the_same_command(method, tmp_path, model_dirs, chat_data):
    result = _run("train", "--model", model_dirs("qwen3_moe"), "--data", chat_data, "--method", method,
                  "--out", tmp_path / method, "--max-steps", "2", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / method / "train_report.json").read_text())
    assert report["method"] == method and report["parameters"]["trainable"] > 0


def test_esft_method_needs_an_expert_config(tmp_path, model_dirs, chat_data):
    result = _run("train", "--model", model_dirs("qwen3_moe"), "--data", chat_data, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--expert-config" in result.output


def test_expert_config_is_refused_for_fft_and_lora(tmp_path, model_dirs, chat_data):
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"experts": {"0": [1]}}))
    result = _run("train", "--model", model_dirs("qwen3_moe"), "--data", chat_data, "--method", "lora",
                  "--expert-config", experts, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--expert-config" in result.output and not (tmp_path / "a").exists()


def test_merge_into_an_existing_directory_names_out(tmp_path, model_dirs):
    (tmp_path / "merged").mkdir()
    result = _run("merge", "--model", model_dirs("qwen3_moe"), "--adapter", tmp_path / "adapter",
                  "--out", tmp_path / "merged")
    assert result.exit_code == 2 and "--out" in result.output and "Traceback" not in result.output


def test_plot_metrics_defaults_to_loss_png(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 4)))
    result = _run("plot", "--metrics", metrics)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "loss.png").is_file() and not (tmp_path / "scores.png").exists()


def test_toy_model_pretrain_honours_the_size_flags_and_rejects_other_families(tmp_path):
    result = _run("toy-model", tmp_path / "m", "--pretrain", "--layers", "1", "--experts", "8", "--top-k", "2",
                  "--hidden", "32", "--steps", "2")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["n_routed_experts"], config["num_experts_per_tok"],
            config["hidden_size"]) == (1, 8, 2, 32)
    assert _run("toy-model", tmp_path / "q", "--pretrain", "--family", "qwen3_moe").exit_code == 2
    assert _run("toy-model", tmp_path / "s", "--steps", "5").exit_code == 2
