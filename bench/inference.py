"""Benchmark of adapter serving: hot-swap cost vs a raw memory copy, cold load, and throughput ratios.

Prints one JSON object:

- ``swap_ms``: apply + restore of one adapter from host memory (``esft.serving.swap.HotSwap``, the
  engine's hot-swap path); ``memcpy_ms``: one raw ``copy_`` of the adapter's bytes into a warm buffer;
  ``swap_over_memcpy`` (median of per-round ratios). Apply + restore in place must move those bytes
  twice (adapter in, base back), so 2.0 is the floor.
- ``slot_swap_ms``: the mixed-batch path's switch: copy the adapter into expert slots + evict it (the
  base rows are never written, so one copy).
- ``generic_swap_ms``: ``esft.adapters.apply_adapter`` + ``restore`` (saves the rows on every apply).
- ``cold_load_ms``: an adapter cache miss: read + sha256 check + compatibility check from disk.
- throughputs (generated tokens/s over prefill + decode of a batch) on two servers: a hot-swap server
  (plain model: ``base_tok_s``, ``adapter_swap_tok_s``) and a mixed-batch server (expert slots:
  ``base_slots_tok_s``, ``adapter_tok_s``, ``mixed_tok_s`` with ``--adapters`` adapters in one batch).
  Ratios are medians of per-round ratios: ``adapter_over_base`` (mixed server), ``adapter_swap_over_base``,
  ``slots_base_over_plain_base`` (what attached slots cost the base model) and ``mixed_over_single``.

The model is a random toy MoE (deepseek_v2 layout) big enough that compute dominates on 2 CPU cores.
Adapters are synthetic: ``--selected`` random experts per layer with perturbed weights (what ESFT
adapters are: whole replaced experts). Configurations are measured interleaved, ``--repeats`` times,
and medians are reported (the CPU may be shared).

Run: ``python bench/inference.py`` (about 3 minutes on 2 cores); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from esft.adapters import ESFTAdapter, apply_adapter, restore
from esft.expert_config import ExpertConfig
from esft.models.discovery import find_moe_layers
from esft.models.identity import identity_of
from esft.models.tokenizer import build_tokenizer
from esft.models.toy import toy_model
from esft.serving import Engine, EngineConfig, GenerationRequest, SamplingParams, batch_generate, dict_resolver
from esft.serving.cache import AdapterCache
from esft.serving.slots import ExpertSlots
from esft.serving.swap import HotSwap


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--selected", type=int, default=6, help="experts per layer each adapter replaces")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--swap-repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.experts, args.top_k, args.selected = 64, 2, 8, 2, 2
        args.prompt_len, args.new_tokens, args.repeats, args.swap_repeats, args.adapters = 8, 4, 2, 3, 3
    return args


def synthetic_adapter(model, n_selected: int, seed: int) -> ESFTAdapter:
    """Replace ``n_selected`` random experts per MoE layer with perturbed copies."""
    generator = torch.Generator().manual_seed(seed)
    experts, tensors, rows = {}, {}, {}
    for layer in find_moe_layers(model):
        ids = sorted(torch.randperm(layer.num_experts, generator=generator)[:n_selected].tolist())
        experts[layer.layer_index] = ids
        module = layer.experts(model)
        for name in layer.expert_params:
            base = getattr(module, name).detach()[ids]
            noise = torch.randn(base.shape, generator=generator, dtype=base.dtype)
            tensors[f"{layer.experts_name}.{name}"] = (base + 0.5 * base.std() * noise).contiguous()
            rows[f"{layer.experts_name}.{name}"] = layer.layer_index
    config = ExpertConfig(experts=experts, base_model=identity_of(model.config))
    return ESFTAdapter(config, tensors, rows, {"synthetic": True})


def interleaved_ms(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Run the functions round-robin ``repeats`` times (after one warm-up each); milliseconds per call.

    Interleaving exposes every function to the same background load, so ratios stay meaningful on a
    shared CPU.
    """
    for fn in fns.values():
        fn()  # warm-up: first-use snapshots, allocator
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def copy_costs(model, adapter: ESFTAdapter, adapter_dir: Path, repeats: int) -> dict[str, float]:
    """Hot-swap, slot placement, the generic apply/restore and a raw copy of the same bytes; cold load."""
    swap, slots = HotSwap(model), ExpertSlots(model, rows_per_layer=adapter_rows(adapter), max_adapters=1)
    targets = {key: torch.empty_like(tensor) for key, tensor in adapter.tensors.items()}

    def memcpy() -> None:
        for key, tensor in adapter.tensors.items():
            targets[key].copy_(tensor)

    def hot_swap() -> None:
        swap.apply("a0", adapter)
        swap.restore()

    def slot_swap() -> None:
        slots.place("a0", adapter)
        slots.evict("a0")

    def generic_swap() -> None:
        restore(model, apply_adapter(model, adapter, check=False))

    fns = {"memcpy": memcpy, "swap": hot_swap, "slot_swap": slot_swap, "generic_swap": generic_swap}
    times = interleaved_ms(fns, repeats)
    slots.detach()
    cold = interleaved_ms({"cold": lambda: AdapterCache(dict_resolver({"a0": adapter_dir}), 2**40).get("a0")}, 5)

    def over_memcpy(name: str) -> float:  # median of ratios to the memcpy run right before
        return round(statistics.median(a / b for a, b in zip(times[name], times["memcpy"], strict=True)), 2)

    return {
        "adapter_bytes": adapter.nbytes,
        "swap_ms": round(statistics.median(times["swap"]), 3),
        "memcpy_ms": round(statistics.median(times["memcpy"]), 3),
        "swap_over_memcpy": over_memcpy("swap"),
        "slot_swap_ms": round(statistics.median(times["slot_swap"]), 3),
        "slot_swap_over_memcpy": over_memcpy("slot_swap"),
        "generic_swap_ms": round(statistics.median(times["generic_swap"]), 3),
        "generic_swap_over_memcpy": over_memcpy("generic_swap"),
        "cold_load_ms": round(statistics.median(cold["cold"]), 2),
    }


def adapter_rows(adapter: ESFTAdapter) -> int:
    return max(len(ids) for ids in adapter.expert_config.experts.values())


def throughput(engine: Engine, models: list[str | None], prompts: list[list[int]], new_tokens: int) -> float:
    """Generated tokens per second for one batch (prefill + decode)."""
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    requests = [GenerationRequest(p, m, params) for p, m in zip(prompts, models, strict=True)]
    started = time.perf_counter()
    results = batch_generate(engine, requests, timeout=600)
    elapsed = time.perf_counter() - started
    return sum(r.completion_tokens for r in results) / elapsed


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    shape = dict(hidden=args.hidden, layers=args.layers, experts=args.experts, top_k=args.top_k)
    base_model = toy_model("deepseek_v2", **shape)
    adapters = [synthetic_adapter(base_model, args.selected, seed) for seed in range(args.adapters)]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {f"a{i}": a.save_pretrained(Path(tmp) / f"a{i}") for i, a in enumerate(adapters)}
        costs = copy_costs(base_model, adapters[0], dirs["a0"], args.swap_repeats)
        tokenizer = build_tokenizer()
        sizes = dict(max_batch_size=args.batch, max_new_tokens=args.new_tokens, max_adapters_in_batch=args.adapters)
        swap_engine = Engine(
            toy_model("deepseek_v2", **shape),
            tokenizer,
            resolver=dict_resolver(dirs),
            config=EngineConfig(batching="swap", **sizes),
            base_name="base",
        )
        mixed_engine = Engine(
            base_model,
            tokenizer,
            resolver=dict_resolver(dirs),
            base_name="base",
            config=EngineConfig(slot_rows=args.adapters * args.selected, **sizes),
        )
        rates = measure_throughputs(args, swap_engine, mixed_engine)
        swap_engine.close()
        mixed_engine.close()
    shape_info = {
        **shape,
        "selected_per_layer": args.selected,
        "adapters": args.adapters,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "load_average_1m": round(os.getloadavg()[0], 2),  # at the end of the run
    }
    return {**costs, **rates, "setup": shape_info}


def measure_throughputs(args, swap_engine: Engine, mixed_engine: Engine) -> dict[str, float]:
    """Throughputs (median over repeats) and their ratios (median of ratios within each repeat)."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 500, (args.prompt_len,), generator=generator).tolist() for _ in range(args.batch)]
    one = ["a0"] * args.batch
    mixed = [f"a{i % args.adapters}" for i in range(args.batch)]
    configs = {
        "base_tok_s": (swap_engine, [None] * args.batch),
        "adapter_swap_tok_s": (swap_engine, one),
        "base_slots_tok_s": (mixed_engine, [None] * args.batch),
        "adapter_tok_s": (mixed_engine, one),
        "mixed_tok_s": (mixed_engine, mixed),
    }
    for engine, models in configs.values():  # warm-up: loads adapters, fills the slots, first-use costs
        throughput(engine, models, prompts, 2)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        order = list(configs) if repeat % 2 == 0 else list(reversed(configs))  # cancels drift within a round
        for name in order:
            engine, models = configs[name]
            samples[name].append(throughput(engine, models, prompts, args.new_tokens))
    rates = {name: round(statistics.median(values), 2) for name, values in samples.items()}

    def ratio(top: str, bottom: str) -> float:
        return round(statistics.median(a / b for a, b in zip(samples[top], samples[bottom], strict=True)), 3)

    def spread(top: str, bottom: str) -> dict[str, float]:
        values = [a / b for a, b in zip(samples[top], samples[bottom], strict=True)]
        return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
                "max": round(max(values), 3)}

    rates["adapter_over_base"] = ratio("adapter_tok_s", "base_slots_tok_s")  # same server, mixed path
    rates["adapter_swap_over_base"] = ratio("adapter_swap_tok_s", "base_tok_s")  # same server, hot-swap path
    rates["slots_base_over_plain_base"] = ratio("base_slots_tok_s", "base_tok_s")  # cost of attached slots
    rates["mixed_over_single"] = ratio("mixed_tok_s", "adapter_tok_s")
    # Every engine path against the plain model (base traffic, no slots), per round: min / median / max.
    rates["over_plain"] = {name: spread(name, "base_tok_s") for name in configs if name != "base_tok_s"}
    return rates


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    result = run(args)
    result["targets"] = {
        "swap_over_memcpy<=2": result["swap_over_memcpy"] <= 2.0,
        "adapter_over_base>=0.97": result["adapter_over_base"] >= 0.97,
        "slot_base_over_plain>=0.97": result["over_plain"]["base_slots_tok_s"]["median"] >= 0.97,
        "slot_adapter_over_plain>=0.97": result["over_plain"]["adapter_tok_s"]["median"] >= 0.97,
        "mixed_over_single>=0.9": result["mixed_over_single"] >= 0.9,
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
