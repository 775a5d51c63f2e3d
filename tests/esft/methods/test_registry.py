"""The method registry: names, lookups, one registration per name, and recognising saved directories."""

from __future__ import annotations

import json

import pytest

from esft.errors import ConfigError
from esft.methods import Method, detect_method, get_method, method_names, register_method


def test_every_method_is_registered_with_what_it_needs():
    assert method_names() == ["esft", "esft_lora", "fft", "lora", "lora_experts"]
    assert [get_method(n).needs_expert_config for n in method_names()] == [True, True, False, False, False]
    assert get_method("fft").full_checkpoint and not get_method("lora").full_checkpoint


def test_a_name_is_registered_once():
    esft = get_method("esft")
    assert register_method(esft) is esft  # registering the same method again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("esft", None, print, print, saved_as="OTHER"))


def test_saved_directories_are_recognised_or_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert detect_method(tmp_path).name == "lora"  # lora_experts writes the same peft directories
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "ESFT_LORA"}))
    assert detect_method(tmp_path).name == "esft_lora"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ConfigError, match="PREFIX_TUNING") as refused:
        detect_method(tmp_path)
    assert refused.value.param == "adapter"
