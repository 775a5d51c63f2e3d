"""ESFT on a CUDA device: the split-training invariants and adapter round trip on the GPU, then ESFT vs full
fine-tuning step time on a mid-sized model. Prints one JSON object. Needs a GPU; exits 2 without one.

The CPU test suite proves the invariants on every family; this checks that the device-handling code paths
(index buffers, routing sums, master weights, adapters) behave the same on CUDA, in fp32 and bf16.

    python bench/gpu_check.py            # checks + timing (a few minutes on one H100/H200)
    python bench/gpu_check.py --quick    # checks + a tiny timing run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

FAMILIES = ("deepseek_v2", "deepseek_v3", "qwen3_moe", "mixtral", "gpt_oss")
SELECTED = [1, 5]


def _loss(model, ids):
    logits = model(input_ids=ids, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def check_family(family: str, dtype: torch.dtype) -> dict:
    """Split loss/grad vs the full model, frozen rows after AdamW with weight decay, adapter apply/restore."""
    from esft.adapters import apply_adapter, restore
    from esft.config import TrainingConfig
    from esft.expert_config import ExpertConfig
    from esft.methods.esft.model import get_esft_model
    from esft.models.discovery import find_moe_layers
    from esft.models.toy import toy_model
    from esft.training.optim import MasterWeights, build_optimizer

    model = toy_model(family, layers=2, experts=8, top_k=2, hidden=128).to(DEVICE, dtype)
    base = copy.deepcopy(model)
    reference = copy.deepcopy(model).requires_grad_(True)
    ids = torch.randint(10, 512, (4, 32), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    ref_loss = _loss(reference, ids)
    ref_loss.backward()
    layers = find_moe_layers(model)
    expert_config = ExpertConfig({layer.layer_index: SELECTED for layer in layers})
    prepared = get_esft_model(model, expert_config)
    loss = _loss(model, ids)
    loss.backward()
    trained = prepared.trainable_parameters()
    grad_err = max(
        float((trained[f"{ly.experts_name}.{n}"].grad.float()
               - getattr(reference.get_submodule(ly.experts_name), n).grad[SELECTED].float()).abs().max())
        for ly in layers for n in ly.expert_params
    )
    masters = MasterWeights(prepared.trainable_parameters())
    optimizer = build_optimizer(masters.masters, TrainingConfig(learning_rate=1e-2, weight_decay=0.1))
    for _ in range(3):
        masters.grads_to_masters()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        masters.masters_to_model()
        _loss(model, ids).backward()
    adapter = prepared.adapter()
    kernel = "one_pass" if prepared.one_pass else "split"
    prepared.fold()
    others = [i for i in range(8) if i not in SELECTED]
    frozen_ok = all(
        torch.equal(p[others], dict(base.named_parameters())[name][others])
        if any(name.startswith(ly.experts_name + ".") for ly in layers) and p.dim() >= 2
        else torch.equal(p, dict(base.named_parameters())[name])
        for name, p in model.named_parameters()
    )
    fresh = copy.deepcopy(base)
    handle = apply_adapter(fresh, adapter)
    with torch.no_grad():
        applied_equal = torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
    restore(fresh, handle)
    restored = all(torch.equal(a, b) for a, b in zip(fresh.parameters(), base.parameters(), strict=True))
    return {"kernel": kernel,
            "loss_diff": abs(float(loss) - float(ref_loss)), "max_trained_grad_err": grad_err,
            "frozen_bit_identical": frozen_ok, "adapter_apply_equal": applied_equal, "restore_bit_exact": restored}


def _timed_steps(model, params: dict, masters, batches) -> list[float]:
    from esft.config import TrainingConfig
    from esft.training.optim import build_optimizer

    optimizer = build_optimizer(params, TrainingConfig(learning_rate=1e-5, weight_decay=0.1))
    times = []
    for i, ids in enumerate(batches):
        _sync()
        start = time.perf_counter()
        _loss(model, ids).backward()
        if masters is not None:
            masters.grads_to_masters()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masters is not None:
            masters.masters_to_model()
        _sync()
        if i >= 2:  # warm-up: optimizer state allocation, kernel selection
            times.append(time.perf_counter() - start)
    return times


def time_esft_vs_fft(args) -> dict:
    """Alternating ESFT (one pass), ESFT (split) and FFT rounds; per-step min/median/max of each arm and ratios."""
    from transformers import AutoModelForCausalLM

    from esft.expert_config import ExpertConfig
    from esft.methods.esft.model import get_esft_model
    from esft.models.discovery import find_moe_layers
    from esft.models.toy import toy_config
    from esft.training.optim import MasterWeights

    config = toy_config("deepseek_v2", layers=args.layers, experts=64, top_k=6, hidden=args.hidden,
                        vocab_size=4096, shared_experts=2, moe_intermediate_size=args.hidden // 2)
    torch.manual_seed(0)
    template = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 4096, (args.batch, args.seq), generator=g) for _ in range(args.steps + 2)]
    batches = [b.to(DEVICE) for b in batches]
    arms: dict[str, list[float]] = {"esft": [], "esft_split": [], "fft": []}
    for _ in range(args.rounds):
        for arm in arms:
            model = copy.deepcopy(template).to(DEVICE)
            if arm == "fft":
                model.requires_grad_(True)
                arms[arm] += _timed_steps(model, {n: p for n, p in model.named_parameters()}, None, batches)
            else:  # ~10% of experts per layer, as the paper's selections
                selected = ExpertConfig({ly.layer_index: list(range(0, 64, 10)) for ly in find_moe_layers(model)})
                kernel = "split" if arm == "esft_split" else "auto"
                masters = MasterWeights(get_esft_model(model, selected, experts_kernel=kernel).trainable_parameters())
                arms[arm] += _timed_steps(model, masters.masters, masters, batches)
            del model
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    summary = {arm: {"min": min(t), "median": statistics.median(t), "max": max(t)} for arm, t in arms.items()}
    return {"config": vars(args) | {"params": sum(p.numel() for p in template.parameters())},
            "step_s": summary, "step_time_ratio_median": summary["esft"]["median"] / summary["fft"]["median"],
            "split_step_time_ratio_median": summary["esft_split"]["median"] / summary["fft"]["median"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="dry run of the script on the CPU (no GPU figures)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.cpu else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    if args.quick:
        args.hidden, args.layers, args.batch, args.seq, args.steps, args.rounds = 256, 2, 2, 128, 3, 1
    checks = {f"{family}/{str(dtype).removeprefix('torch.')}": check_family(family, dtype)
              for family in FAMILIES for dtype in (torch.float32, torch.bfloat16)}
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "checks": checks,
              "timing": time_esft_vs_fft(args)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
