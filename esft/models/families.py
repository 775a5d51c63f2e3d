"""Which MoE families ESFT supports, which it cannot train and why, and which ones upstream added since.

Support is generic: any model whose experts class transformers decorates with ``use_experts_implementation``
is found by ``esft.models.discovery`` without a family entry. This module is the one extension point for
the exceptions and the one place every family list lives:

- ``SUPPORTED_FAMILIES``: the model types this project lists as supported. Each one is built as a toy model
  and run through the family matrix (``tests/esft/methods/test_family_matrix.py``); a failure there is a regression.
- ``UNSUPPORTED_FAMILIES``: families ESFT cannot train, with the reason (``find_moe_layers`` raises it).
- ``NO_TOY_MODEL``: decorated families that are trainable when loaded but have no causal-LM toy of their own
  (multimodal wrappers whose text model is listed, models transformers builds for other tasks only).
- ``new_upstream_families()``: causal-LM MoE families of the *installed* transformers that none of the above
  names. They are built and trained automatically where they can be (the matrix skips them with the reason
  where they cannot, and ``scripts/family_table.py`` writes that reason into ``docs/families.md``), so a
  transformers upgrade that adds a family never turns the tests red by itself.

Adding a family means one entry in ``SUPPORTED_FAMILIES`` (plus a quirk in ``esft.models.toy`` if its tiny
config needs one), or one reason in ``UNSUPPORTED_FAMILIES`` / ``NO_TOY_MODEL``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

# fmt: off
SUPPORTED_FAMILIES: tuple[str, ...] = (
    "afmoe", "aria_text", "axk1", "axk2", "bailing_hybrid", "beam", "cohere2_moe",
    "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4", "dots1", "dots3_note_text",
    "ernie4_5_moe", "exaone_moe", "flex_olmo", "flint", "gemma4_text", "glm4_moe", "glm4_moe_lite",
    "glm_moe_dsa", "gpt_oss", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared",
    "hunyuan_v1_moe", "hy_v3", "hy_v4", "inkling2_loop_text", "inkling2_text", "inkling_text", "jamba",
    "kimi_linear", "kolibri1", "laguna", "lara_mini", "lfm2_moe", "mellum", "mimo_v2_flash", "minimax",
    "minimax_m2", "minimax_m3_vl_text", "mixtral", "nemotron_h", "olmoe", "phimoe", "qwen2_moe",
    "qwen3_5_moe_text", "qwen3_moe", "qwen3_next", "qwen4_exp_text", "solar_open", "zaya",
)
# fmt: on

_NOT_DECORATED = "experts not decorated with transformers' `use_experts_implementation`: "

# Families ESFT cannot train (model type or transformers directory name -> why).
UNSUPPORTED_FAMILIES: dict[str, str] = {
    "dbrx": _NOT_DECORATED + "fused per-expert weights in its own layout; the router returns logits only",
    "doge": _NOT_DECORATED + "its experts are embedding rows (product-key retrieval); ESFT does not apply",
    "jetmoe": _NOT_DECORATED + "mixture of attention heads plus ParallelExperts with its own gating",
    "llama4": _NOT_DECORATED + "dense compute over every expert with a sigmoid router (no top-k dispatch)",
    "longcat_flash": _NOT_DECORATED + "zero/identity experts are mixed with the real ones outside the experts module",
    "step3p7": _NOT_DECORATED + "vision-language model only, no causal LM",
    "nllb_moe": "encoder-decoder translation model with per-expert modules, not a causal-LM MoE",
    "switch_transformers": "encoder-decoder T5 model with per-expert modules, not a causal-LM MoE",
}

_USE_TEXT = "multimodal wrapper; its text-only causal LM `{}` is supported"
_NO_CAUSAL_LM = "decorated experts, but transformers builds no causal LM for it ({})"

# Decorated families (transformers directory name) without a toy model of their own, and why.
NO_TOY_MODEL: dict[str, str] = {
    "aria": _USE_TEXT.format("aria_text"),
    "dots3_note": _USE_TEXT.format("dots3_note_text"),
    "gemma4": _USE_TEXT.format("gemma4_text"),
    "inkling": _USE_TEXT.format("inkling_text"),
    "inkling2": _USE_TEXT.format("inkling2_text"),
    "inkling2_loop": _USE_TEXT.format("inkling2_loop_text"),
    "minimax_m3_vl": _USE_TEXT.format("minimax_m3_vl_text"),
    "qwen3_5_moe": _USE_TEXT.format("qwen3_5_moe_text"),
    "qwen4_exp": _USE_TEXT.format("qwen4_exp_text"),
    "deepseek_ocr2": _NO_CAUSAL_LM.format("OCR image-text-to-text model"),
    "diffusion_gemma": _NO_CAUSAL_LM.format("block-diffusion language model, not autoregressive"),
    "ernie4_5_vl_moe": _NO_CAUSAL_LM.format("vision-language model only"),
    "glm4v_moe": _NO_CAUSAL_LM.format("vision-language model only"),
    "glm5_next": _NO_CAUSAL_LM.format("vision-language model only"),
    "hy_v4_vl": _NO_CAUSAL_LM.format("vision-language model only"),
    "mistral4": _NO_CAUSAL_LM.format("Mistral4ForCausalLM exists but is registered for pretraining only"),
    "mistral_large4": _NO_CAUSAL_LM.format("vision-language model only"),
    "muse_spark": _NO_CAUSAL_LM.format("vision-language model only"),
    "openai_privacy_filter": _NO_CAUSAL_LM.format("token-classification model only"),
    "qwen3_omni_moe": _NO_CAUSAL_LM.format("omni (audio/vision) model only"),
    "qwen3_vl_moe": _NO_CAUSAL_LM.format("vision-language model only"),
    "unlimited_ocr": _NO_CAUSAL_LM.format("OCR image-text-to-text model"),
}

# Families whose packed rows (``esft.data.batching.collate_packed`` with ``esft.models.packed_attention``) give
# exactly the per-sample logits, as the per-family test (tests/esft/data/test_packing.py) proves; training packs
# batches only for these. The others stay padded: the DSA families (axk2, deepseek_v32, dots3_note_text,
# glm_moe_dsa, hy_v4) read the attention mask in their own indexer code; deepseek_v4, zaya and
# granitemoehybrid get no position_ids in attention; the inkling texts use a position bias; the hybrid/recurrent
# families (bailing_hybrid, jamba, kimi_linear, lfm2_moe, minimax, nemotron_h, qwen3_next, qwen3_5_moe_text,
# qwen4_exp_text) carry recurrent state across sample boundaries; gemma4_text differs by 5e-6 (more than float
# reassociation on these toys, less than a leak) and stays padded.
# fmt: off
PACKING_EXACT: frozenset[str] = frozenset({
    "afmoe", "aria_text", "axk1", "beam", "cohere2_moe", "deepseek_v2", "deepseek_v3", "dots1", "ernie4_5_moe",
    "exaone_moe", "flex_olmo", "flint", "glm4_moe", "glm4_moe_lite", "gpt_oss", "granitemoe", "granitemoe_swa",
    "granitemoeshared", "hunyuan_v1_moe", "hy_v3", "kolibri1", "laguna", "lara_mini", "mellum", "mimo_v2_flash",
    "minimax_m2", "minimax_m3_vl_text", "mixtral", "olmoe", "phimoe", "qwen2_moe", "qwen3_moe", "solar_open",
})
# fmt: on

# Families whose logits change when a prompt is left-padded inside a batch (checked per family by
# tests/esft/serving/test_serving_families.py against each prompt alone): deepseek_v4's compressed-KV attention
# (CSA/HCA) pools positions in fixed blocks, so padding shifts the blocks and enters the pools (0.26 on the toy;
# every other family is within 2e-6). The serving engine decodes their requests one at a time.
LEFT_PADDING_LEAKS: frozenset[str] = frozenset({"deepseek_v4"})

# Child-module names (of the MoE block) that hold shared experts or their gates.
SHARED_EXPERT_MARKERS: tuple[str, ...] = ("shared",)

# Child-module names of the MoE block that hold the router.
ROUTER_NAMES: tuple[str, ...] = ("gate", "router")

# Experts kernels that honour the expert-parallel sentinel for every family; eager does not for
# gpt_oss and nemotron_h, so split (trainable) experts always run one of these.
SENTINEL_SAFE_KERNELS: tuple[str, ...] = ("grouped_mm", "batched_mm")


def unsupported_reason(model_type: str | None) -> str | None:
    """Why a family cannot be trained with ESFT, or None if nothing is known against it."""
    return UNSUPPORTED_FAMILIES.get(model_type or "")


@cache
def decorated_directories() -> frozenset[str]:
    """transformers model directories whose modeling code decorates an experts class (installed version)."""
    import transformers

    models_dir = Path(transformers.__file__).parent / "models"
    return frozenset(
        path.parent.name
        for path in models_dir.glob("*/modeling_*.py")
        if "@use_experts_implementation" in path.read_text(encoding="utf-8")
    )


@cache
def upstream_families() -> tuple[str, ...]:
    """Causal-LM model types of the installed transformers whose experts class is decorated."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    decorated = decorated_directories()
    return tuple(sorted(t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if model_type_to_module_name(t) in decorated))


def new_upstream_families() -> tuple[str, ...]:
    """Causal-LM MoE families the installed transformers has that no list here names yet."""
    known = set(SUPPORTED_FAMILIES) | set(UNSUPPORTED_FAMILIES) | set(NO_TOY_MODEL)
    return tuple(f for f in upstream_families() if f not in known)


def unlisted_directories() -> tuple[str, ...]:
    """Decorated transformers directories that neither a listed family nor a new causal LM accounts for."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    accounted = {model_type_to_module_name(f) for f in (*SUPPORTED_FAMILIES, *new_upstream_families())}
    accounted |= set(UNSUPPORTED_FAMILIES) | set(NO_TOY_MODEL)
    return tuple(sorted(decorated_directories() - accounted))
