"""Regenerate docs/families.md: how each transformers MoE family stores and routes its experts.

Builds every family of ``esft.models.families.SUPPORTED_FAMILIES`` as a toy model and reads the facts off it
(the ``use_experts_implementation`` layout flags, shared-expert modules, the router's outputs, the on-disk
expert names), then does the same for the causal-LM MoE families the installed transformers added since
(each also split-trained for one step; the reason is written down where that fails), then lists the families
ESFT cannot train and those without a toy model, with the reasons.

Usage:
    python scripts/family_table.py --output docs/families.md
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402

from esft.expert_config import ExpertConfig  # noqa: E402
from esft.methods.esft import get_esft_model  # noqa: E402
from esft.methods.esft.one_pass import one_pass_reason  # noqa: E402
from esft.models.discovery import find_moe_layers  # noqa: E402
from esft.models.families import (  # noqa: E402
    NO_TOY_MODEL,
    SUPPORTED_FAMILIES,
    UNSUPPORTED_FAMILIES,
    new_upstream_families,
    unlisted_directories,
)
from esft.models.toy import toy_model  # noqa: E402

EXPERTS, TOP_K, HIDDEN = 8, 2, 64

# Facts the toy model cannot show by itself.
NOTES: dict[str, str] = {
    "afmoe": "router zero-initialised upstream (toy_model re-draws it); sigmoid scores with expert_bias",
    "aria_text": "text model of the `aria` VLM",
    "deepseek_v2": "MLA attention; needs num_key_value_heads == num_attention_heads; "
    "`topk_method` greedy or group_limited_greedy",
    "deepseek_v3": "sigmoid router with e_score_correction_bias; group-limited top-k",
    "deepseek_v32": "DSA indexer attention (needs num_key_value_heads == num_attention_heads)",
    "deepseek_v4": "hash-routed (`hash_moe`) or learned (`moe`) layers; toy uses `moe` everywhere",
    "dots3_note_text": "text model of the `dots3_note` VLM",
    "gemma4_text": "a dense MLP runs beside the MoE block in every layer (`enable_moe_block`); "
    "router returns probabilities",
    "glm_moe_dsa": "DSA indexer attention (needs num_key_value_heads == num_attention_heads)",
    "gpt_oss": "gate/up interleaved, biases, clamped SwiGLU; the eager kernel ignores the EP sentinel",
    "granitemoehybrid": "Mamba2 / attention hybrid",
    "inkling_text": "text model of the `inkling` multimodal model",
    "inkling2_text": "text model of the `inkling2` multimodal model",
    "jamba": "Mamba / attention hybrid",
    "kimi_linear": "linear-attention hybrid",
    "lfm2_moe": "short-convolution / attention hybrid",
    "minimax_m3_vl_text": "text model of the `minimax_m3_vl` VLM",
    "nemotron_h": "no gate (`up_proj`, `down_proj`, relu2); MoE blocks alternate with Mamba / attention "
    "blocks; the eager kernel ignores the EP sentinel",
    "qwen3_5_moe_text": "text model of the `qwen3_5_moe` VLM; gated-delta-net hybrid",
    "qwen3_next": "gated-delta-net hybrid",
    "qwen4_exp_text": "text model of `qwen4_exp`; gated-delta-net / indexed-attention hybrid",
    "zaya": "top-1 routing only; router returns E+1 columns",
}


@dataclass
class FamilyFacts:
    """One row of the table."""

    family: str
    experts_class: str
    layout: str
    shared: str
    router: str
    on_disk: str
    kernel: str
    notes: str


def _symbolic(shape: torch.Size, sizes: dict[int, str]) -> str:
    """A shape with known sizes replaced by their names, e.g. ``[T, E]``."""
    return "[" + ", ".join(sizes.get(int(d), str(int(d))) for d in shape) + "]"


def _describe_output(output: object, sizes: dict[int, str]) -> str:
    """``(logits[T, E], [T, k], [T, k])``-style description of a router's return value."""
    items = output if isinstance(output, tuple) else (output,)
    parts = []
    for item in items:
        if not isinstance(item, torch.Tensor):
            parts.append(type(item).__name__)
            continue
        kind = ""
        if item.is_floating_point() and item.ndim == 2 and sizes.get(item.shape[1]) in ("E", "E+1"):
            sums_to_one = torch.allclose(item.sum(-1), torch.ones(item.shape[0]), atol=1e-4)
            kind = "probs" if sums_to_one else ("logits" if (item < 0).any() else "scores")
        elif not item.is_floating_point():
            kind = "index"
        elif item.ndim == 2 and sizes.get(item.shape[1]) == "k":
            kind = "weights"
        parts.append(f"{kind}{_symbolic(item.shape, sizes)}")
    return "(" + ", ".join(parts) + ")" if len(parts) > 1 else parts[0]


def _moe_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The first experts module and the MoE block that holds it."""
    for block in model.modules():
        for child in block.children():
            if hasattr(child, "num_experts") and hasattr(child, "is_transposed"):
                return block, child
    raise RuntimeError("no experts module found")


def _router_description(model: torch.nn.Module, block: torch.nn.Module, tokens: int) -> str:
    """Run a forward and describe what the router child of the MoE block returns.

    The router is the first non-shared child whose name or class says gate/router and whose output has an
    expert-sized last dimension.
    """
    candidates = {
        name: child
        for name, child in block.named_children()
        if "shared" not in name and any(word in name.lower() or word in type(child).__name__.lower()
                                        for word in ("gate", "router"))
    }  # fmt: skip
    outputs: dict[str, object] = {}
    handles = [
        child.register_forward_hook(lambda _m, _a, out, name=name: outputs.setdefault(name, out))
        for name, child in candidates.items()
    ]
    with torch.no_grad():
        model(input_ids=torch.randint(7, 512, (1, tokens), generator=torch.Generator().manual_seed(0)))
    for handle in handles:
        handle.remove()
    sizes = {tokens: "T", EXPERTS: "E", EXPERTS + 1: "E+1", TOP_K: "k", HIDDEN: "H"}
    for name, output in outputs.items():
        tensors = output if isinstance(output, tuple) else (output,)
        expert_sized = (EXPERTS, EXPERTS + 1)
        if any(isinstance(t, torch.Tensor) and t.ndim and t.shape[-1] in expert_sized for t in tensors):
            return f"`{name}`: {_describe_output(output, sizes)}"
    return "computed inside the MoE block"


def _on_disk_layout(model: torch.nn.Module, experts_name: str) -> str:
    """How ``save_pretrained`` writes the first MoE layer's experts.

    Either one tensor per expert (names shown with the expert index as ``{e}``) or fused 3-D tensors of
    ``num_experts`` rows (names shown).
    """
    shapes: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        for path in Path(directory).glob("*.safetensors"):
            with safe_open(str(path), framework="pt") as handle:
                shapes.update({name: handle.get_slice(name).get_shape() for name in handle.keys()})  # noqa: SIM118
    layer_index = next(part for part in experts_name.split(".") if part.isdigit())
    in_layer = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        first_index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if first_index is not None and parts[first_index] == layer_index:
            in_layer[".".join(parts[first_index + 1 :])] = shape
    per_expert = {re.sub(r"experts\.\d+\.", "experts.{e}.", n) for n in in_layer if re.search(r"experts\.\d+\.", n)}
    if per_expert:
        return "per expert: " + ", ".join(f"`{n}`" for n in sorted(per_expert))
    fused = sorted(n for n, shape in in_layer.items() if len(shape) == 3 and shape[0] == EXPERTS)
    return "fused: " + ", ".join(f"`{n}`" for n in fused)


def family_facts(family: str) -> FamilyFacts:
    """Build ``family`` as a toy model and read its table row off it."""
    model = toy_model(family, experts=EXPERTS, top_k=TOP_K, hidden=HIDDEN)
    block, experts = _moe_parts(model)
    experts_name = next(name for name, module in model.named_modules() if module is experts)
    flags = ("is_transposed", "has_bias", "has_gate", "is_concatenated")
    layout = ", ".join(f"{flag}={'Y' if getattr(experts, flag) else 'N'}" for flag in flags)
    shared = [f"`{name}`" for name, _ in block.named_children() if "shared" in name]
    layer = find_moe_layers(model)[0]
    reason = one_pass_reason(layer.experts(model), layer.expert_params)
    return FamilyFacts(
        family=family,
        experts_class=type(experts).__name__,
        layout=layout,
        shared=", ".join(shared) or "-",
        router=_router_description(model, block, tokens=5),
        on_disk=_on_disk_layout(model, experts_name),
        kernel=f"split: {reason}" if reason else "one pass",
        notes=NOTES.get(family, ""),
    )


def probe_new_family(family: str) -> FamilyFacts | str:
    """The table row of a family upstream added, or why it cannot be built or split-trained."""
    try:
        facts = family_facts(family)
        model = toy_model(family, experts=EXPERTS, top_k=TOP_K, hidden=HIDDEN)
        prepared = get_esft_model(model, ExpertConfig({layer.layer_index: [0] for layer in find_moe_layers(model)}))
        ids = torch.randint(7, 512, (1, 8), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        if not all(
            p.grad is not None and torch.isfinite(p.grad).all() for p in prepared.trainable_parameters().values()
        ):
            return "split training gave no or non-finite expert gradients"
    except Exception as exc:  # noqa: BLE001 - the reason is the product here
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    facts.notes = (facts.notes + "; " if facts.notes else "") + "added upstream, built and trained automatically"
    return facts


def render(rows: list[FamilyFacts], failed: dict[str, str]) -> str:
    """The whole Markdown document."""
    lines = [
        "# MoE families in transformers " + transformers.__version__,
        "",
        "Generated by `python scripts/family_table.py --output docs/families.md`; do not edit by hand.",
        "",
        "Every family below builds as a toy model (`esft.models.toy.toy_model`, "
        f"{EXPERTS} experts, top-{TOP_K}, hidden {HIDDEN})",
        "and its experts class is decorated with `use_experts_implementation`. Layout flags are the",
        "decorator's (`Y`/`N`); router shapes use T tokens, E experts, k chosen experts, H hidden size.",
        "",
        "**ESFT support: every family in this table.** `tests/esft/methods/test_family_matrix.py` trains each one",
        "with both experts kernels it can use (the one-pass kernel, `esft/methods/esft/one_pass.py`, and the",
        "two-module split, `layer.py`): the loss equals the original model's, the trained rows' gradients and the",
        "gradients upstream of every MoE layer equal full backprop, and after AdamW steps with weight decay every",
        "unselected expert and every non-expert tensor is bit-identical while every selected expert moved. The",
        "kernel column says which one `get_esft_model` picks (bf16 models: the one-pass forward sees the trained",
        "rows rounded to bf16, the split an fp32 twin; both keep fp32 masters). Scoring, resume and the",
        "adapter round trip (apply / restore / merge) are tested on deepseek_v2 (also group-limited routing),",
        "deepseek_v3, qwen2_moe, qwen3_moe, mixtral, olmoe and gpt_oss.",
        "",
        "Families are listed in `esft/models/families.py` (`SUPPORTED_FAMILIES`, `UNSUPPORTED_FAMILIES`,",
        "`NO_TOY_MODEL`). A causal-LM MoE family that a newer transformers adds is built and trained",
        "automatically (marked in the notes); where that fails, it is listed below with the reason.",
        "",
        "| family | builds as toy | experts class | layout | shared experts | router output | on disk "
        "| ESFT experts kernel | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.family, "yes", f"`{r.experts_class}`", r.layout, r.shared, r.router, r.on_disk, r.kernel, r.notes]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += [
            "",
            "## Families added upstream that do not build or train yet",
            "",
            "| family | reason |",
            "|---|---|",
        ]
        lines += [f"| {family} | {reason.replace('|', '/')} |" for family, reason in sorted(failed.items())]
    lines += ["", "## MoE families ESFT does not support", "", "| family | reason |", "|---|---|"]
    lines += [f"| {family} | {reason} |" for family, reason in sorted(UNSUPPORTED_FAMILIES.items())]
    no_toy = {
        **NO_TOY_MODEL,
        **{d: "decorated experts; not yet classified (added upstream)" for d in unlisted_directories()},
    }
    lines += [
        "",
        "## Decorated families not built as toy models",
        "",
        "Their experts have the fused layout above, but transformers has no causal LM for them",
        "(or the causal LM is the text model listed in the first table).",
        "",
        "| family | reason |",
        "|---|---|",
    ]
    lines += [f"| {f} | {r} |" for f, r in sorted(no_toy.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write here instead of printing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = [family_facts(family) for family in SUPPORTED_FAMILIES]
    failed: dict[str, str] = {}
    for family in new_upstream_families():
        probed = probe_new_family(family)
        if isinstance(probed, str):
            failed[family] = probed
        else:
            rows.append(probed)
    text = render(sorted(rows, key=lambda r: r.family), failed)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
