"""ESFT vs full fine-tuning on one MoE model: step time, trainable share, gradient+optimizer bytes, peak RSS,
and the cost of a scoring pass relative to a plain forward pass. Prints one JSON object.

Each measurement runs in its own subprocess so peak RSS is that mode's alone.

    python bench/esft_vs_fft.py                  # the documented configuration (hidden 512, 8 layers, 64x top-6)
    python bench/esft_vs_fft.py --small          # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(args, dtype: torch.dtype = torch.float32):
    """The benchmark model (DeepSeek-V2 family) and fixed random batches, identical in every mode."""
    from transformers import AutoModelForCausalLM

    from esft.models.toy import toy_config

    config = toy_config("deepseek_v2", layers=args.layers, experts=args.experts, top_k=args.top_k,
                        hidden=args.hidden, vocab_size=args.vocab, shared_experts=2,
                        moe_intermediate_size=args.expert_size, intermediate_size=4 * args.hidden)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # built in its dtype: peak RSS is that dtype's
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g) for _ in range(args.steps + 2)]
    return model, batches


def _experts_timer(model) -> dict[str, float]:
    """Accumulates the seconds spent inside every experts module's forward (the dispatch and expert GEMMs)."""
    spent, started = {"experts_forward_s": 0.0}, {}

    def before(module, args, kwargs):
        started[id(module)] = time.perf_counter()

    def after(module, args, kwargs, output):
        start = started.pop(id(module), None)  # a split layer's twin shares its base's hook dicts: count once
        if start is not None:
            spent["experts_forward_s"] += time.perf_counter() - start

    seen_hooks: set[int] = set()
    for module in model.modules():
        if hasattr(module, "num_experts") and hasattr(module, "is_transposed"):
            if id(module._forward_hooks) in seen_hooks:
                continue
            seen_hooks.add(id(module._forward_hooks))
            module.register_forward_pre_hook(before, with_kwargs=True)
            module.register_forward_hook(after, with_kwargs=True)
    return spent


def _step(model, ids, optimizer, masters, experts_spent: dict[str, float]) -> dict[str, float]:
    """One training step, timed by phase (the CPU runs each phase synchronously)."""
    experts_spent["experts_forward_s"] = 0.0
    t0 = time.perf_counter()
    logits = model(input_ids=ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    if masters is not None:
        masters.grads_to_masters()
    optimizer.step()
    t3 = time.perf_counter()
    return {"step_s": t3 - t0, "forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2,
            "experts_forward_s": experts_spent["experts_forward_s"]}


def run_train(args, mode: str) -> dict:
    from esft.config import TrainingConfig
    from esft.expert_config import ExpertConfig
    from esft.methods.esft import get_esft_model
    from esft.training.optim import MasterWeights, build_optimizer, state_bytes

    mode, *options = mode.split("+")  # options: ckpt (activation checkpointing), bf16 (bf16 weights, fp32 masters)
    model, batches = build(args, torch.bfloat16 if "bf16" in options else torch.float32)
    total = sum(p.numel() for p in model.parameters())
    if "ckpt" in options:
        model.train().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if mode == "fft":
        masters = MasterWeights(dict(model.named_parameters())) if "bf16" in options else None
        params = masters.masters if masters else dict(model.named_parameters())
    else:
        kernel = "split" if mode == "esft_split" else "auto"
        prepared = get_esft_model(model, ExpertConfig.load(args.expert_config), experts_kernel=kernel)
        masters = MasterWeights(prepared.trainable_parameters())
        params = masters.masters
    optimizer = build_optimizer(params, TrainingConfig(learning_rate=1e-5, weight_decay=0.1))
    experts_spent = _experts_timer(model)
    phases, bytes_ = [], 0
    for i, ids in enumerate(batches):
        timing = _step(model, ids, optimizer, masters, experts_spent)
        if i >= 2:  # the first two steps allocate optimizer state and warm kernels
            phases.append(timing)
        bytes_ = state_bytes(optimizer)  # gradients + AdamW moments, before they are cleared
        optimizer.zero_grad(set_to_none=True)
    breakdown = {key: statistics.median(p[key] for p in phases) for key in phases[0]}
    return {"median_step_s": breakdown["step_s"], "breakdown_median_s": breakdown, "state_bytes": bytes_,
            "total_params": total, "trainable_params": sum(p.numel() for p in params.values()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_score(args) -> dict:
    """Score experts (writes the expert config for the ESFT run) and time scoring vs a plain forward."""
    from esft.config import ScoringConfig, SelectionConfig
    from esft.data.tokenize import TokenizedExample
    from esft.scoring.scores import score_experts
    from esft.selection import select_experts

    model, batches = build(args)
    model.eval()
    examples = [TokenizedExample(row.tolist(), row.tolist(), False, 0) for b in batches for row in b]
    config = ScoringConfig(batch_size=args.batch, n_sample_tokens=10**9)
    with torch.inference_mode():
        for ids in batches[:1]:
            model(input_ids=ids, use_cache=False)  # warm-up
    forward, scoring = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        scores = score_experts(model, examples, config, pad_token_id=0)
        scoring.append(time.perf_counter() - start)
    selected = select_experts(scores, SelectionConfig("token", 0.2))
    selected.save(args.expert_config)
    n_experts = args.experts * len(scores.layers)
    return {"forward_s": min(forward), "scoring_s": min(scoring), "selected_experts": selected.n_selected,
            "selected_fraction_of_experts": selected.n_selected / n_experts}


def _subprocess(mode: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--mode", mode, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--expert-size", type=int, default=256, help="moe_intermediate_size")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="scoring/forward repeats (best of)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating ESFT/FFT rounds (each gives a ratio)")
    parser.add_argument("--with-split", action="store_true", help="also time ESFT with the two-module split")
    parser.add_argument("--small", action="store_true", help="tiny smoke configuration")
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS and step time of ESFT and FFT with activation checkpointing and bf16 weights")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--expert-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.hidden, args.layers, args.experts, args.top_k, args.expert_size = 64, 2, 16, 2, 32
        args.seq, args.steps, args.repeats, args.rounds = 32, 2, 1, 2
    if args.mode:
        torch.set_num_threads(torch.get_num_threads())
        result = run_score(args) if args.mode == "score" else run_train(args, args.mode)
        print(json.dumps(result))
        return
    argv = [a for a in sys.argv[1:]]
    if args.memory:
        print(json.dumps(memory_options(args, argv), indent=2))
        return
    arms = ["esft", "fft"] + (["esft_split"] if args.with_split else [])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        argv += ["--expert-config", str(Path(tmp) / "experts.json")]
        score = _subprocess("score", argv)
        # The arms alternate, each round in fresh processes, so a burst of load elsewhere cannot favour one arm;
        # each round gives one ratio (medians of that round's steps), and the ratios are summarised.
        rounds = [{arm: _subprocess(arm, argv) for arm in arms} for _ in range(args.rounds)]
    load_after = os.getloadavg()
    ratios = [r["esft"]["median_step_s"] / r["fft"]["median_step_s"] for r in rounds]
    first = rounds[0]["esft"]
    trainable_fraction = first["trainable_params"] / first["total_params"]
    busiest = max(load_before[0], load_after[0])
    result = {
        "config": {k: getattr(args, k) for k in ("hidden", "layers", "experts", "top_k", "expert_size", "batch",
                                                  "seq", "steps", "rounds")},
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [load_before, load_after],
        "inconclusive": busiest > (os.cpu_count() or 1),  # something else was loading the machine
        "step_time_ratio": _summary(ratios),
        "split_step_time_ratio": _summary([r["esft_split"]["median_step_s"] / r["fft"]["median_step_s"]
                                           for r in rounds]) if args.with_split else None,
        "trainable_fraction": trainable_fraction,
        "state_bytes_ratio": first["state_bytes"] / rounds[0]["fft"]["state_bytes"],
        "state_bytes_ratio_over_trainable_fraction":
            first["state_bytes"] / rounds[0]["fft"]["state_bytes"] / trainable_fraction,
        "peak_rss_ratio": first["peak_rss_mb"] / rounds[0]["fft"]["peak_rss_mb"],
        "scoring_overhead": score["scoring_s"] / score["forward_s"],
        "breakdown_median_s": {arm: {k: statistics.median(r[arm]["breakdown_median_s"][k] for r in rounds)
                                     for k in first["breakdown_median_s"]} for arm in arms},
        "rounds": rounds,
        "scoring": score,
    }
    print(json.dumps(result, indent=2))


def memory_options(args, argv: list[str]) -> dict:
    """Each method plain, with activation checkpointing and with bf16 weights: peak RSS and step time, and their
    ratios to the plain run (peak RSS is deterministic; the step times alternate over ``--rounds``)."""
    arms = [f"{method}{option}" for method in ("esft", "fft") for option in ("", "+ckpt", "+bf16")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*argv, "--expert-config", str(Path(tmp) / "experts.json")]
        _subprocess("score", argv)
        rounds = [{arm: _subprocess(arm, argv) for arm in arms} for _ in range(args.rounds)]
    load_after = os.getloadavg()
    out = {"load_average_before_after": [load_before, load_after],
           "inconclusive": max(load_before[0], load_after[0]) > (os.cpu_count() or 1)}
    for arm in arms:
        plain = arm.split("+")[0]
        out[arm] = {
            "peak_rss_mb": rounds[0][arm]["peak_rss_mb"],
            "median_step_s": statistics.median(r[arm]["median_step_s"] for r in rounds),
            "peak_rss_over_plain": rounds[0][arm]["peak_rss_mb"] / rounds[0][plain]["peak_rss_mb"],
            "step_time_over_plain": _summary([r[arm]["median_step_s"] / r[plain]["median_step_s"] for r in rounds]),
        }
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}

if __name__ == "__main__":
    main()
