"""Tests for the toy MoE models (every family of the matrix) and the toy tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esft.errors import ConfigError, UnsupportedModelError
from esft.models.families import (
    NO_TOY_MODEL,
    SUPPORTED_FAMILIES,
    UNSUPPORTED_FAMILIES,
    new_upstream_families,
    upstream_families,
)
from esft.models.tokenizer import SPECIAL_TOKENS, build_tokenizer, special_token_ids
from esft.models.toy import build_toy_model, toy_config, toy_model
from tests.esft.families import MATRIX, family_guard

REQUIRED_FAMILIES = ("deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "gpt_oss")
LAYERS, EXPERTS = 2, 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls gain nothing from threads, and spinning OpenMP threads crawl on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules carrying the `use_experts_implementation` layout attributes."""
    layout = ("num_experts", "has_gate", "is_transposed")
    return [m for m in model.modules() if all(hasattr(m, name) for name in layout)]


def padded_batch(length: int = 24, pad: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random sequences; the second is left-padded by ``pad`` tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIAL_TOKENS), 512, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :pad] = special_token_ids()["<|pad|>"]
    attention_mask[1, :pad] = 0
    return input_ids, attention_mask


def expert_token_counts(model: torch.nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Tokens routed to each expert, per MoE layer, seen by a pre-hook on the experts modules."""
    counts: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        expert_ids = args[1] if len(args) > 1 else kwargs["top_k_index"]  # [n_tokens, top_k]
        valid = expert_ids[expert_ids < module.num_experts]
        counts.append(torch.bincount(valid.flatten(), minlength=module.num_experts))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in experts_modules(model)]
    with torch.no_grad():
        model(input_ids=input_ids)
    for handle in handles:
        handle.remove()
    return counts


@pytest.mark.parametrize("family", MATRIX)
def test_family_builds_runs_and_routes(family: str) -> None:
    with family_guard(family):
        _check_family_builds_runs_and_routes(family)


def _check_family_builds_runs_and_routes(family: str) -> None:
    model = toy_model(family, layers=LAYERS, experts=EXPERTS, top_k=2, hidden=64)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.shape == (2, input_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()

    experts = experts_modules(model)
    assert len(experts) == LAYERS
    assert {m.num_experts for m in experts} == {EXPERTS}
    assert model.config.model_type == family

    # Routers are not degenerate: every expert of every layer receives tokens of random text.
    random_text = torch.randint(len(SPECIAL_TOKENS), 512, (4, 64), generator=torch.Generator().manual_seed(1))
    for layer_counts in expert_token_counts(model, random_text):
        assert (layer_counts > 0).all(), f"{family}: experts without tokens: {layer_counts.tolist()}"


@pytest.mark.parametrize("family", REQUIRED_FAMILIES)
def test_save_load_round_trip(family: str, tmp_path: Path) -> None:
    path = build_toy_model(tmp_path / family, family=family, seed=3)
    assert path == tmp_path / family
    in_memory = toy_model(family, seed=3)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    batch = tokenizer(["hello experts", "a longer second sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = in_memory(**batch).logits
        actual = loaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert loaded.config.pad_token_id == tokenizer.pad_token_id
    assert loaded.config.eos_token_id == tokenizer.eos_token_id
    assert loaded.config.bos_token_id == tokenizer.bos_token_id


def test_required_families_are_built() -> None:
    assert set(REQUIRED_FAMILIES) <= set(SUPPORTED_FAMILIES)
    listed = [set(SUPPORTED_FAMILIES), set(UNSUPPORTED_FAMILIES), set(NO_TOY_MODEL)]
    assert all(not (a & b) for i, a in enumerate(listed) for b in listed[i + 1 :])


def test_every_supported_family_is_a_causal_lm_moe_upstream() -> None:
    """A supported family that transformers no longer builds as a decorated causal LM is a regression."""
    assert set(SUPPORTED_FAMILIES) - set(upstream_families()) == set()


def test_new_upstream_families_are_buildable_by_name() -> None:
    """Families transformers adds are not refused by name: toy_config tries them like the listed ones."""
    for family in new_upstream_families():
        with family_guard(family):
            assert toy_config(family).model_type == family


def test_dense_first_layer_via_override() -> None:
    model = toy_model("deepseek_v2", layers=3, first_k_dense_replace=1)
    assert len(experts_modules(model)) == 2
    model = toy_model("qwen3_moe", layers=3, first_k_dense_replace=1)
    assert len(experts_modules(model)) == 2
    with pytest.raises(ConfigError, match="mixtral"):
        toy_config("mixtral", first_k_dense_replace=1)


def test_deepseek_v2_group_limited_greedy() -> None:
    config = toy_config("deepseek_v2", topk_method="group_limited_greedy", n_group=4, topk_group=2)
    assert (config.topk_method, config.n_group, config.topk_group) == ("group_limited_greedy", 4, 2)
    model = toy_model("deepseek_v2", topk_method="group_limited_greedy", n_group=4, topk_group=2)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=input_ids, attention_mask=attention_mask).logits).all()


def test_toy_config_shape() -> None:
    config = toy_config("qwen2_moe", experts=4, top_k=1, hidden=32, layers=3)
    assert (config.num_experts, config.num_experts_per_tok, config.hidden_size) == (4, 1, 32)
    assert config.num_hidden_layers == 3 and config.moe_intermediate_size >= 16
    assert config.tie_word_embeddings is False and config.output_router_logits is False
    assert config.max_position_embeddings == 2048
    assert config.shared_expert_intermediate_size > 0
    v2 = toy_config("deepseek_v2")
    assert v2.num_key_value_heads == v2.num_attention_heads == 4


def test_unknown_family_names_it_and_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedModelError, match="not_a_family") as excinfo:
        toy_config("not_a_family")
    assert all(family in str(excinfo.value) for family in SUPPORTED_FAMILIES)
    with pytest.raises(UnsupportedModelError, match=re.escape(UNSUPPORTED_FAMILIES["dbrx"])):
        build_toy_model("unused", family="dbrx")


def test_invalid_sizes_are_all_reported() -> None:
    with pytest.raises(ConfigError) as excinfo:
        toy_config("mixtral", layers=0, top_k=9, hidden=30)
    assert len(excinfo.value.problems) == 3


# --- tokenizer ---

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  \n\ttabs\r\n",
    "héllo wörld — naïve café ñ ß",
    "日本語のテキスト 中文 한국어 العربية עברית",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    "control \x00\x01\x7f chars and zero\u200bwidth",
    "def f(x):\n    return x ** 2  # ∑∫√",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_any_text(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_tokenizer_special_tokens(tokenizer) -> None:
    ids = special_token_ids()
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [ids[t] for t in SPECIAL_TOKENS]
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.eos_token == "<|eos|>"
    assert tokenizer.pad_token == "<|pad|>"
    config = toy_config("mixtral")
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert len(tokenizer) <= config.vocab_size


def test_chat_template_is_prefix_stable(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    for i in range(1, len(messages)):
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False)
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        assert after.startswith(before)
        if messages[i]["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
            assert after.startswith(prompt)
            prompt_ids = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)["input_ids"]
            assert tokenizer(after, add_special_tokens=False).input_ids[: len(prompt_ids)] == prompt_ids
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.count("<|end|>") == len(messages)
    assert "4<|end|>" in full


def test_offsets_mapping(tokenizer) -> None:
    text = "The user asks: héllo 🙂"
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = encoding["offset_mapping"]
    assert len(offsets) == len(encoding["input_ids"])
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(start <= end for start, end in offsets)


def test_tokenizer_is_deterministic_and_reloads(tokenizer, tmp_path: Path) -> None:
    again = build_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.decode(reloaded(TEXTS[4]).input_ids) == TEXTS[4]


def test_tokenizer_custom_corpus() -> None:
    small = build_tokenizer(["aaa bbb aaa bbb"] * 10, vocab_size=300)
    assert len(small) <= 300
    assert small.decode(small("zzz 🙂").input_ids) == "zzz 🙂"
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(vocab_size=100)


def test_family_guard_skips_only_unlisted_families() -> None:
    """A failure of a family upstream added (not listed yet) is a skip with the reason; of a listed one, a failure."""
    skipped = pytest.raises(pytest.skip.Exception, match="new_family.*RuntimeError: cannot build")
    with skipped, family_guard("new_family"):
        raise RuntimeError("cannot build")
    with pytest.raises(RuntimeError), family_guard("qwen3_moe"):
        raise RuntimeError("regression")
