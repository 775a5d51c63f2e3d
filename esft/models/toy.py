"""Tiny offline Mixture-of-Experts causal LMs for every transformers family ESFT can train (tests, CLI).

The families are listed in ``esft.models.families``; families transformers adds later are built the same way.

Each family's config class names the same ideas differently (``num_experts``, ``num_local_experts``,
``n_routed_experts``, ``moe_num_experts`` ...). ``toy_config`` sets every synonym the config class knows, then
applies the few per-family quirks in ``_FAMILY_EXTRAS``, then the caller's overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from esft.errors import ConfigError, UnsupportedModelError
from esft.models.families import NO_TOY_MODEL, SUPPORTED_FAMILIES, UNSUPPORTED_FAMILIES, new_upstream_families
from esft.models.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, build_tokenizer, special_token_ids
from esft.models.toy_init import confident_head, spread_zero_routers

_HEADS = 4


@dataclass(frozen=True)
class _Shape:
    """The requested toy size; derived sizes are properties so every family agrees on them."""

    layers: int
    experts: int
    top_k: int
    hidden: int
    shared: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden // _HEADS

    @property
    def expert_intermediate(self) -> int:
        return max(16, self.hidden // 2)


def _generic_values(shape: _Shape) -> dict[str, Any]:
    """Values for every attribute name (and synonym) a tiny MoE config may have; unknown names are dropped."""
    ids = special_token_ids()
    hd, moe_i, e, k, s = shape.head_dim, shape.expert_intermediate, shape.experts, shape.top_k, shape.shared
    # fmt: off
    return {
        "vocab_size": shape.vocab_size, "unpadded_vocab_size": shape.vocab_size, "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers, "intermediate_size": 2 * shape.hidden,
        "dense_intermediate_size": 2 * shape.hidden, "moe_intermediate_size": moe_i,
        "max_position_embeddings": 2048, "sliding_window": 64, "tie_word_embeddings": False,
        "output_router_logits": False, "router_jitter_noise": 0.0,
        "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "bos_token_id": ids[BOS_TOKEN], "eos_token_id": ids[EOS_TOKEN], "pad_token_id": ids[PAD_TOKEN],
        # attention: 4 heads, no GQA (MLA / DSA families need num_key_value_heads == num_attention_heads)
        "num_attention_heads": _HEADS, "num_key_value_heads": _HEADS, "head_dim": hd,
        "swa_num_attention_heads": _HEADS, "swa_num_key_value_heads": _HEADS, "swa_head_dim": hd,
        "kv_lora_rank": 2 * hd, "q_lora_rank": 2 * hd, "qk_rope_head_dim": hd, "qk_nope_head_dim": hd,
        "qk_head_dim": 2 * hd, "v_head_dim": hd,
        "index_head_dim": hd, "index_n_heads": _HEADS, "index_topk": 16,
        "linear_key_head_dim": hd, "linear_value_head_dim": hd, "linear_head_dim": hd,
        "linear_num_key_heads": _HEADS, "linear_num_value_heads": _HEADS, "linear_num_heads": _HEADS,
        # routed experts
        "num_experts": e, "num_local_experts": e, "n_routed_experts": e, "moe_num_experts": e,
        "num_experts_per_tok": k, "num_experts_per_token": k, "moe_k": k, "moe_topk": k, "top_k_experts": k,
        "n_group": 1, "topk_group": 1, "num_expert_group": 1, "enable_moe_block": True,
        # shared experts
        "n_shared_experts": s, "num_shared_experts": s, "moe_num_shared_experts": s,
        "shared_expert_intermediate_size": moe_i * s, "shared_intermediate_size": moe_i * s,
        "moe_shared_expert_intermediate_size": moe_i * s, "shared_experts_intermediate_size": moe_i * s,
        # every layer an MoE layer
        "first_k_dense_replace": 0, "num_dense_layers": 0, "mlp_only_layers": [], "decoder_sparse_step": 1,
        "moe_layer_start_index": 0, "moe_layer_end_index": shape.layers - 1, "moe_layer_interval": 1,
        "moe_layer_freq": 1, "expert_layer_period": 1, "expert_layer_offset": 0,
        "num_nextn_predict_layers": 0,
    }
    # fmt: on


def _cycle(kinds: list[str], layers: int) -> list[str]:
    """``kinds`` repeated to a list of ``layers`` entries."""
    return [kinds[i % len(kinds)] for i in range(layers)]


# Hybrid mixers alternate, attention first: the hybrid caches need an attention layer.
_HYBRID = ["full_attention", "linear_attention"]

# Per-family quirks, applied after the generic values and before the caller's overrides.
# fmt: off
_FAMILY_EXTRAS: dict[str, Callable[[_Shape], dict[str, Any]]] = {
    "deepseek_v4": lambda s: {"o_lora_rank": 2 * s.head_dim, "o_groups": 2},
    # sliding-window layers take their MLA sizes from `swa_*` arguments (defaults: 64 heads of 256)
    "dots3_note_text": lambda s: {
        "swa_num_attention_heads": _HEADS, "swa_num_key_value_heads": _HEADS, "swa_v_head_dim": s.head_dim,
        "swa_q_lora_rank": 2 * s.head_dim, "swa_kv_lora_rank": 2 * s.head_dim,
        "swa_head_dim": 2 * s.head_dim, "swa_qk_nope_head_dim": s.head_dim,
    },
    # per-layer embeddings default to 262144 x 256 per layer: shrink them
    "gemma4_text": lambda s: {"vocab_size_per_layer_input": s.vocab_size, "hidden_size_per_layer_input": 16},
    "granitemoehybrid": lambda s: {
        "layer_types": _cycle(_HYBRID, s.layers), "mamba_n_heads": _HEADS, "mamba_d_head": 2 * s.head_dim,
        "mamba_d_state": 16, "mamba_n_groups": 1,
    },
    # attention every second layer (the others Mamba), pure-torch Mamba path (no CUDA kernels)
    "jamba": lambda s: {
        "attn_layer_period": 2, "attn_layer_offset": 1, "use_mamba_kernels": False, "mamba_d_state": 16,
        "mamba_dt_rank": 8, "mamba_expand": 2,
    },
    "lfm2_moe": lambda s: {"layer_types": _cycle(["full_attention", "conv"], s.layers)},
    # sliding-window layers double the KV heads (which must not exceed the query heads), and the default
    # partial_rotary_factor (0.334) of a 16-wide head is not an even rotary size
    "mimo_v2_flash": lambda s: {
        "num_key_value_heads": _HEADS // 2,
        "rope_parameters": {
            kind: {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}
            for kind in ("full_attention", "sliding_attention")
        },
    },
    # `layers` counts MoE blocks; each follows a mixer block (attention, then Mamba, alternating)
    "nemotron_h": lambda s: {
        "layer_types": [block for mixer in _cycle(_HYBRID, s.layers) for block in (mixer, "moe")],
        "use_mamba_kernels": False, "mamba_num_heads": _HEADS, "mamba_head_dim": 2 * s.head_dim,
        "ssm_state_size": 16, "n_groups": 1,
    },
    # full-attention layers are indexed (QSA) and need indexer sizes
    "qwen4_exp_text": lambda s: {
        "indexer_n_heads": _HEADS, "indexer_kv_heads": 1, "indexer_head_dim": s.head_dim,
        "indexer_budget": 16, "indexer_compress_ratio": 4, "hc_lowrank": 16,
    },
    "zaya": lambda s: {"num_experts_per_tok": 1},  # ZAYA supports top-1 routing only
}
# fmt: on


def _layer_type_lists(defaults: PretrainedConfig, layers: int) -> dict[str, Any]:
    """Per-layer type lists for ``layers`` layers: all MoE, attention kinds cycled so each kind is built.

    Attention kinds keep their first-seen order, but recurrent kinds (linear attention, Mamba) go last so that
    even a one-layer model has a real attention layer (the hybrid caches need one).
    """
    lists: dict[str, Any] = {}
    default_types = getattr(defaults, "layer_types", None)
    if isinstance(default_types, list) and default_types:
        first_seen = list(dict.fromkeys(default_types))
        kinds = sorted(first_seen, key=lambda t: ("linear" in t or "mamba" in t, first_seen.index(t)))
        lists["layer_types"] = _cycle(kinds, layers)
    default_mlp = getattr(defaults, "mlp_layer_types", None)
    if isinstance(default_mlp, list) and default_mlp:
        lists["mlp_layer_types"] = [default_mlp[-1]] * layers  # the last default layer is always sparse
    return lists


# Families in which every decoder layer is an MoE layer (no dense-MLP layer option).
# fmt: off
_NO_DENSE_LAYERS: frozenset[str] = frozenset({
    "aria_text", "deepseek_v4", "flex_olmo", "gemma4_text", "gpt_oss", "granitemoe", "granitemoe_swa",
    "granitemoehybrid", "granitemoeshared", "hunyuan_v1_moe", "inkling2_text", "jamba", "kolibri1", "minimax",
    "minimax_m2", "mixtral", "olmoe", "phimoe", "qwen3_5_moe_text", "qwen4_exp_text", "solar_open", "zaya",
})
# fmt: on


def _dense_prefix(family: str, config: PretrainedConfig, dense: int) -> dict[str, Any]:
    """Attribute values that make the first ``dense`` MoE layers dense MLPs, in this family's vocabulary."""
    if family in _NO_DENSE_LAYERS:
        raise ConfigError(
            f"`first_k_dense_replace`: family {family!r} has no dense decoder layers; leave it at 0",
            param="first_k_dense_replace",
        )
    if family == "nemotron_h":  # blocks alternate mixer, moe: the first `dense` moe blocks become mlp
        blocks = list(config.layers_block_type)
        return {"layer_types": ["mlp" if i < 2 * dense and b == "moe" else b for i, b in enumerate(blocks)]}
    candidates = {
        "first_k_dense_replace": dense,
        "num_dense_layers": dense,
        "mlp_only_layers": list(range(dense)),
        "moe_layer_start_index": dense,
    }
    known = config.to_dict()
    values = {name: value for name, value in candidates.items() if name in known}
    if isinstance(known.get("mlp_layer_types"), list):
        values["mlp_layer_types"] = ["dense"] * dense + known["mlp_layer_types"][dense:]
    return values


def toy_config(
    family: str,
    *,
    layers: int = 2,
    experts: int = 8,
    top_k: int = 2,
    hidden: int = 64,
    vocab_size: int = 512,
    shared_experts: int = 1,
    **overrides: Any,
) -> PretrainedConfig:
    """Build the config of a tiny causal MoE LM of ``family`` where every decoder layer is an MoE layer.

    Shared experts are added where the family has them; token ids match ``build_tokenizer()``.

    Args:
        family: a model type from ``SUPPORTED_FAMILIES`` (or one transformers added since).
        layers: number of MoE decoder layers (for ``nemotron_h``, each also gets a mixer block before it).
        experts: routed experts per MoE layer.
        top_k: experts chosen per token (``zaya`` always routes top-1).
        hidden: hidden size; must be a multiple of 4 (the number of attention heads). Experts use
            ``max(16, hidden // 2)`` as intermediate size, dense MLPs ``2 * hidden``.
        vocab_size: vocabulary size of the model (at least the tokenizer's).
        shared_experts: shared experts per layer, for families that have them (``dots3_note_text``,
            ``inkling_text`` and ``qwen4_exp_text`` need at least one).
        **overrides: config attributes to set last, e.g. ``topk_method="group_limited_greedy", n_group=4,
            topk_group=2``. ``first_k_dense_replace=k`` makes the first ``k`` layers dense in any family that
            has dense layers.

    Returns:
        An unsaved ``PretrainedConfig`` of the family's config class.

    Raises:
        UnsupportedModelError: if ``family`` has no toy model.
        ConfigError: if a size is invalid or the family cannot have dense layers.

    Example:
        >>> config = toy_config("qwen3_moe", experts=4, top_k=1)
        >>> config.num_experts, config.num_experts_per_tok
        (4, 1)
    """
    if family not in SUPPORTED_FAMILIES and family not in new_upstream_families():
        known = UNSUPPORTED_FAMILIES.get(family) or NO_TOY_MODEL.get(family)
        reason = f" ({known})" if known else ""
        message = f"`family`: no toy model for {family!r}{reason}; choose one of: {', '.join(SUPPORTED_FAMILIES)}"
        raise UnsupportedModelError(message, param="family")
    dense = overrides.pop("first_k_dense_replace", 0)
    _check_sizes(layers=layers, experts=experts, top_k=top_k, hidden=hidden, dense=dense)
    shape = _Shape(layers, experts, top_k, hidden, shared_experts, vocab_size)
    config_class = CONFIG_MAPPING[family]
    defaults = config_class()
    settable = _settable_names(defaults)
    values = {name: value for name, value in _generic_values(shape).items() if name in settable}
    values.update({k: v for k, v in _layer_type_lists(defaults, layers).items() if k in settable})
    values.update(_FAMILY_EXTRAS.get(family, lambda _: {})(shape))
    config = config_class(**{**values, **overrides})
    if dense:
        config = config_class(**{**values, **_dense_prefix(family, config, dense), **overrides})
    return config


def _check_sizes(*, layers: int, experts: int, top_k: int, hidden: int, dense: int) -> None:
    sizes = {"layers": layers, "experts": experts}
    problems = [f"`{name}` must be >= 1, got {value}" for name, value in sizes.items() if value < 1]
    if dense != 0 and not 0 < dense < layers:
        problems.append(f"`first_k_dense_replace` must be in [0, `layers`={layers}), got {dense}")
    if not 1 <= top_k <= experts:
        problems.append(f"`top_k` must be between 1 and `experts` ({experts}), got {top_k}")
    if hidden < 16 or hidden % _HEADS:
        problems.append(f"`hidden` must be a multiple of {_HEADS} and >= 16, got {hidden}")
    if problems:
        raise ConfigError(problems)


def _settable_names(defaults: PretrainedConfig) -> set[str]:
    """The config's fields and their aliases, less read-only properties (jamba's ``layer_types``)."""
    config_class = type(defaults)
    names = set(defaults.to_dict()) | set(getattr(config_class, "attribute_map", {}))
    attributes = {name: getattr(config_class, name, None) for name in names}
    return {name for name, a in attributes.items() if not (isinstance(a, property) and a.fset is None)}


def toy_model(family: str = "deepseek_v2", *, seed: int = 0, **kwargs: Any) -> PreTrainedModel:
    """Build a randomly initialised tiny MoE causal LM in memory (fp32, eval mode).

    Routers that the family initialises to zero (every token would pick the same experts) are re-drawn from
    ``N(0, initializer_range)``, so every expert receives tokens on random text.

    Args:
        family: a model type from ``SUPPORTED_FAMILIES`` (or one transformers added since).
        seed: seed for the weight initialisation; the same arguments always give the same weights.
        **kwargs: passed to ``toy_config`` (``layers``, ``experts``, ``top_k``, ``hidden`` and overrides).

    Returns:
        The ``AutoModelForCausalLM`` model.

    Raises:
        UnsupportedModelError: if ``family`` has no toy model.

    Example:
        >>> model = toy_model("mixtral", experts=4)
        >>> model.config.num_local_experts
        4
    """
    config = toy_config(family, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    spread_zero_routers(model, std=getattr(config, "initializer_range", 0.02))
    confident_head(model)
    return model.eval()


def build_toy_model(
    out_dir: str | Path,
    *,
    family: str = "deepseek_v2",
    layers: int = 2,
    experts: int = 8,
    top_k: int = 2,
    hidden: int = 64,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Build a randomly initialised tiny MoE model and its tokenizer, and save both to ``out_dir``.

    The directory then loads offline with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``. The same arguments always give the same weights.

    Args:
        out_dir: directory to write (created if missing).
        family: a model type from ``SUPPORTED_FAMILIES`` (or one transformers added since).
        layers, experts, top_k, hidden, **overrides: as for ``toy_config``.
        seed: seed for the weight initialisation.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        UnsupportedModelError: if ``family`` has no toy model.

    Example:
        >>> path = build_toy_model(tmp_path / "toy", family="mixtral")  # doctest: +SKIP
    """
    model = toy_model(family, seed=seed, layers=layers, experts=experts, top_k=top_k, hidden=hidden, **overrides)
    tokenizer = build_tokenizer()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
