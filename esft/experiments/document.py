"""Assembles ``docs/results.md`` from the comparison's results (sections in ``esft.experiments.report``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from esft.experiments import report as r
from esft.experiments.tasks import GENERAL_TASKS, TASKS


def _setup(results: dict[str, Any]) -> list[str]:
    pre, cfg = results["pretrain"], results["config"]
    p = pre["config"]
    scores = ", ".join(f"{k} {v * 100:.0f}" for k, v in pre["general_scores"].items())
    lines = [
        "## Setup",
        "",
        f"- **Base model**: DeepSeek-V2 family (`deepseek_v2` in transformers), {p['layers']} MoE layers, hidden "
        f"{p['hidden']}, {p['experts']} routed experts top-{p['top_k']} with group-limited routing "
        f"({p['n_group']} groups, {p['topk_group']} per token) + {p['shared_experts']} shared experts, "
        f"character-level tokenizer; {pre['parameters']:,} parameters. Pretrained from scratch for {p['steps']} "
        f"steps of {p['batch_size']} chat examples (lr {p['learning_rate']}, balance loss {p['balance_coef']}) "
        f"in {pre['train_seconds'] / 60:.1f} min on {pre['threads']} CPU thread(s).",
        f"- **General ability** = mean exact match over held-out samples of the {len(GENERAL_TASKS)} pretraining "
        f"tasks ({cfg['sizes']['n_general']} each). Base model: {pre['general_mean'] * 100:.1f} ({scores}).",
        "- **Tasks** (exact match on the whole answer, several phrasings per instruction):",
        "",
        "| Task | Setting | What it is | Base task EM |",
        "|---|---|---|---|",
    ]
    for task in cfg["tasks"]:
        base = r._base(results, task)["test_accuracy"]
        lines.append(f"| {task} | {TASKS[task].kind} | {TASKS[task].description} | {base * 100:.1f} |")
    s = cfg["sizes"]
    lines += [
        "",
        f"- **Protocol**: every method trains on the same {s['n_train']} examples for {cfg['steps']} steps of "
        f"batch {cfg['batch_size']} (AdamW, cosine schedule, 10% warmup, clip 1.0). Each method sweeps its own "
        "learning rates with seed 0 and keeps the one with the best validation exact match "
        f"({s['n_val']} examples; ties go to the lower validation loss); that rate then runs with seeds "
        f"{', '.join(map(str, cfg['seeds'][1:]))}. Tables show mean ± std over {len(cfg['seeds'])} seeds on "
        f"{s['n_test']} test examples. ESFT experts are scored on the training examples and selected per layer "
        "with the top-p rule (Token p=0.2, Gate p=0.1); *(answer)* scores only assistant tokens; *Random experts* "
        "has ESFT-Token's count per layer with random ids (a new draw per seed). FFT trains every parameter; "
        "LoRA is rank 8 (alpha 16) on every `nn.Linear` except the LM head, i.e. attention and shared experts "
        "(the routed experts are fused 3-D parameters, not `nn.Linear`, and stay frozen, as does the router).",
        "- **Costs**: *Adapter* is what must be stored per task (ESFT: trained expert rows; FFT: the whole model; "
        "LoRA: A/B matrices), in fp32, with its share of the model. *Optim. state* is the AdamW moments of what "
        "trains. *Peak RSS Δ* is the process's peak resident memory during training above its level before it "
        "(Linux `VmHWM`; noisy at this size). *Train s* is wall time on a shared 2-core CPU (other jobs ran "
        "beside it), so compare it only roughly.",
    ]
    return lines


def _stops_working(results: dict[str, Any]) -> list[str]:
    """Plain statements for tasks where ESFT falls well short of FFT, with what the variants change."""
    lines = []
    for task in results["config"]["tasks"]:
        fft = r._gain(results, task, "FFT")
        best = max(r.ESFT_MAIN, key=lambda m: r._gain(results, task, m))
        if fft <= 0 or r._gain(results, task, best) >= 0.5 * fft:
            continue
        parts = []
        for method in ("ESFT-Token +shared", "ESFT-Token +non-expert", "LoRA"):
            if r._row(results, task, method) is not None:
                parts.append(f"{method} {r._gain(results, task, method) * 100:+.1f} "
                             f"(general drop {r._drop(results, task, method) * 100:+.1f})")
        lines.append(
            f"- **{task}** ({TASKS[task].kind}): the best ESFT ({best}) gains "
            f"{r._gain(results, task, best) * 100:+.1f} points where FFT gains {fft * 100:+.1f} "
            f"(general drop {r._drop(results, task, 'FFT') * 100:+.1f}). Others: {'; '.join(parts)}."
        )
    return lines or ["- On every task the best ESFT method reached at least half of FFT's task gain."]


def _scoring(results: dict[str, Any]) -> list[str]:
    table, best = r.scoring_finding(results)
    return [
        "## Which scoring to use",
        "",
        "Token vs gate scores, and scoring all tokens vs only the answer (assistant) tokens, averaged over tasks "
        "(each at its own best learning rate):",
        "",
        *table,
        "",
        f"Best mean task exact match: **{best}** (ties broken by validation loss).",
    ]


def write_results(results: dict[str, Any], out_md: str | Path, plots_dir: str | Path, command: str) -> Path:
    """Write the results page; figures go to ``plots_dir`` and are linked relative to ``out_md``."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    r.plot_methods(results, plots_dir / "method_comparison.png")
    r.plot_tradeoff(results, plots_dir / "tradeoff.png")
    rel = Path(os.path.relpath(plots_dir, out_md.parent))

    def image(name: str) -> str:
        return f"![{name}]({(rel / name).as_posix()})"

    lines = [
        "# ESFT at small scale: does it work?",
        "",
        "Generated by the command below; every number and verdict on this page is computed from its run.",
        "",
        f"```\n{command}\n```",
        "",
        f"Total wall time: {results['seconds'] / 60:.1f} min (pretraining included unless cached).",
        "",
        *_setup(results),
        "",
        "## Routing is concentrated and task-specific (paper Figures 2 and 3)",
        "",
        *r.routing_section(results, image),
        "",
        "## Method comparison",
        "",
    ]
    for task in results["config"]["tasks"]:
        lines += [f"### {task} ({TASKS[task].kind})", "", *r.method_table(results, task), ""]
    lines += [image("method_comparison.png"), "", image("tradeoff.png"), "",
              "## The paper's claims, checked", "", *r.claims(results), "",
              "## Where the method stops working", "", *_stops_working(results), "",
              *_scoring(results), "",
              "## Appendix: learning-rate sweep (seed 0)", "", *r.sweep_table(results), ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines))
    return out_md
