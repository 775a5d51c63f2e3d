"""Adapters in the deepseek-ai/ESFT layout: import -> apply equals loading the official tensors by hand,
export round-trips names, dtypes, values and expert_cfg.json, and a wrong base is refused by tensor name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from esft.adapters import ESFTAdapter, apply_adapter
from esft.adapters.official import export_official, import_official
from esft.errors import AdapterMismatchError, ConfigError
from esft.models.loading import load_model

CFG = {"experts": {"1": [2, 5], "2": [0]}, "shared_experts": False, "non_expert_modules": False}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny DeepSeek-V2 laid out like the real one: decoder layer 0 dense, layers 1-2 MoE."""
    from esft.models.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("dsv2") / "base", layers=3, first_k_dense_replace=1)


def official_tensors(model, cfg, *, prefix="model.", dtype=torch.bfloat16, seed=0, shared=False):
    """Per-expert tensors as the official trainer saves them (full weights, bf16, one tensor per projection)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer, ids in cfg["experts"].items():
        gate_up = model.get_parameter(f"model.layers.{layer}.mlp.experts.gate_up_proj")
        inter = gate_up.shape[1] // 2
        for e in ids:
            for proj, shape in (("gate", (inter, gate_up.shape[2])), ("up", (inter, gate_up.shape[2])),
                                ("down", (gate_up.shape[2], inter))):
                key = f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight"
                tensors[key] = torch.randn(shape, generator=gen).to(dtype)
        if shared:
            key = f"model.layers.{layer}.mlp.shared_experts.up_proj.weight"
            tensors[key] = torch.randn(model.get_parameter(key).shape, generator=gen).to(dtype)
    return {k if prefix else k.removeprefix("model."): v for k, v in tensors.items()}


def write_official(directory, cfg, tensors, shards=2):
    directory.mkdir(parents=True)
    (directory / "expert_cfg.json").write_text(json.dumps(cfg))
    keys = sorted(tensors)
    for i in range(shards):
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, str(directory / f"model-0000{i + 1}-of-0000{shards}.safetensors"))
    return directory


@torch.no_grad()
def load_by_hand(model, tensors):
    """What the official loader does, in this model's fused layout: overwrite each expert's weights."""
    for key, tensor in tensors.items():
        parts = ("model." + key.removeprefix("model.")).split(".")
        if parts[4] != "experts":
            model.get_parameter("model." + key.removeprefix("model.")).copy_(tensor)
            continue
        layer, expert, proj = parts[2], int(parts[5]), parts[6]
        fused_name = "down_proj" if proj == "down_proj" else "gate_up_proj"
        fused = model.get_parameter(f"model.layers.{layer}.mlp.experts.{fused_name}")
        inter = fused.shape[1] // 2
        rows = {"gate_proj": fused[expert, :inter], "up_proj": fused[expert, inter:], "down_proj": fused[expert]}
        target = rows[proj]
        target.copy_(tensor)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize(("prefix", "shared"), [("model.", False), ("", True)], ids=["current", "legacy-shared"])
def test_import_apply_matches_hand_loading_and_export_round_trips(base_dir, tmp_path, prefix, shared):
    cfg = {**CFG, "shared_experts": shared}
    model, _ = load_model(base_dir, device="cpu")
    tensors = official_tensors(model, cfg, prefix=prefix, shared=shared)
    official = write_official(tmp_path / "official", cfg, tensors)
    ids = torch.randint(10, 400, (2, 12), generator=torch.Generator().manual_seed(1))

    adapter_dir = import_official(base_dir, official, tmp_path / "adapter")
    adapter = ESFTAdapter.from_pretrained(adapter_dir)
    assert adapter.expert_config.experts == {1: [2, 5], 2: [0]}
    assert adapter.tensors["model.layers.1.mlp.experts.gate_up_proj"].dtype == torch.bfloat16
    base_logits = logits(model, ids)
    apply_adapter(model, adapter)
    by_hand, _ = load_model(base_dir, device="cpu")
    load_by_hand(by_hand, tensors)
    torch.testing.assert_close(logits(model, ids), logits(by_hand, ids), rtol=0, atol=0)
    assert not torch.allclose(logits(model, ids), base_logits)

    back = export_official(adapter_dir, tmp_path / "back")
    assert json.loads((back / "expert_cfg.json").read_text()) == cfg
    written = {}
    for path in back.glob("*.safetensors"):
        written.update(load_file(str(path)))
    assert sorted(written) == sorted(tensors)
    for key, tensor in tensors.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key


def test_official_adapter_for_another_base_names_the_tensor(base_dir, model_dirs, tmp_path):
    from esft.models.toy import build_toy_model

    other = build_toy_model(tmp_path / "other", layers=3, first_k_dense_replace=1, hidden=32)
    other_model, _ = load_model(other, device="cpu")
    official = write_official(tmp_path / "official", CFG, official_tensors(other_model, CFG))
    with pytest.raises(AdapterMismatchError) as err:
        import_official(base_dir, official, tmp_path / "adapter")
    assert "model.layers.1.mlp.experts.2." in err.value.message and "shape" in err.value.message
    assert err.value.param == "adapter" and not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(("cfg", "edit", "error", "words"), [
    ({"experts": {"1": [9]}}, None, AdapterMismatchError, "expert 9"),  # the toy has 8 experts
    ({"experts": {"0": [1]}}, None, AdapterMismatchError, "not an MoE layer"),
    ({"experts": {"1": [2, 5]}}, "drop", ConfigError, "lack"),
    ({"experts": {"1": [2]}}, "attention", ConfigError, "non_expert_modules: false"),
])
def test_bad_official_adapters_are_refused(base_dir, tmp_path, cfg, edit, error, words):
    model, _ = load_model(base_dir, device="cpu")
    if "0" in cfg["experts"]:  # a dense layer: no experts module to take shapes from
        tensors = {f"model.layers.0.mlp.experts.1.{p}_proj.weight": torch.zeros(32, 64) for p in ("gate", "up")}
        tensors["model.layers.0.mlp.experts.1.down_proj.weight"] = torch.zeros(64, 32)
    else:
        tensors = official_tensors(model, {"experts": {"1": [e for e in cfg["experts"]["1"] if e < 8] or [0]}})
        if 9 in cfg["experts"]["1"]:
            tensors = {k.replace(".experts.0.", ".experts.9."): v for k, v in tensors.items()}
    if edit == "drop":
        tensors.pop("model.layers.1.mlp.experts.5.down_proj.weight")
    if edit == "attention":
        tensors["model.layers.1.self_attn.o_proj.weight"] = model.get_parameter(
            "model.layers.1.self_attn.o_proj.weight").detach().clone()
    official = write_official(tmp_path / "official", cfg, tensors, shards=1)
    with pytest.raises(error) as err:
        import_official(base_dir, official, tmp_path / "adapter")
    assert words in err.value.message and not (tmp_path / "adapter").exists()


def test_cli_convert_both_ways(base_dir, tmp_path):
    from typer.testing import CliRunner

    from esft.cli import app

    model, _ = load_model(base_dir, device="cpu")
    tensors = official_tensors(model, CFG)
    official = write_official(tmp_path / "official", CFG, tensors)
    runner = CliRunner()
    args = ["convert", "--from", "official", "--model", base_dir, "--adapter", official, "--out", tmp_path / "a"]
    assert runner.invoke(app, [str(a) for a in args]).exit_code == 0
    args = ["convert", "--to", "official", "--adapter", tmp_path / "a", "--out", tmp_path / "b"]
    assert runner.invoke(app, [str(a) for a in args]).exit_code == 0
    assert sorted(load_file(str(tmp_path / "b" / "model.safetensors"))) == sorted(tensors)
    missing_model = runner.invoke(app, ["convert", "--from", "official", "--adapter", str(official),
                                        "--out", str(tmp_path / "c")])
    assert missing_model.exit_code != 0 and not (tmp_path / "c").exists()
