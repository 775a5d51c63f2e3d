"""Packed vs padded batches for ESFT training: useful tokens per second and the loss they compute. Prints JSON.

Samples have log-normal lengths between 16 and 1024 tokens. Three arms train the same ESFT model on the same
samples, step by step: ``packed`` (each micro-batch one row, ``esft.data.batching.collate_packed``, attention
per sample through ``esft.models.packed_attention``, as training runs it), ``grouped``
(today's length-grouped padded batches) and ``ungrouped`` (padded batches in random order). The arms alternate
over rounds; each round gives a ratio of useful (non-padding) tokens per second, summarised as min/median/max,
with the load average (a run on a machine busier than its cores is marked inconclusive).

    python bench/packing.py            # the documented configuration (a few minutes on 2 CPU cores)
    python bench/packing.py --small    # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import time

import torch

from esft.config import TrainingConfig
from esft.data.batching import batch_indices, collate, collate_packed
from esft.data.tokenize import TokenizedExample
from esft.methods.esft import get_esft_model
from esft.models.discovery import find_moe_layers
from esft.models.packed_attention import packed_attention
from esft.models.toy import toy_model
from esft.training.loss import answer_loss, n_loss_tokens
from esft.training.optim import MasterWeights, build_optimizer


def samples(n: int, seed: int = 0) -> list[TokenizedExample]:
    """``n`` samples with log-normal lengths clipped to 16..1024 and loss on their second half."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = int(min(1024, max(16, rng.lognormvariate(5.0, 0.8))))
        ids = [rng.randrange(10, 500) for _ in range(length)]
        out.append(TokenizedExample(ids, [-100] * (length // 2) + ids[length // 2 :], False, i + 1))
    return out


def plans(data: list[TokenizedExample], batch: int) -> dict[str, list[list[int]]]:
    lengths = [len(ex.input_ids) for ex in data]
    grouped = batch_indices(lengths, batch, seed=0, epoch=0)
    return {"packed": grouped, "grouped": grouped, "ungrouped": batch_indices(lengths, batch, seed=0, epoch=0,
                                                                            group_by_length=False)}


def run_arm(arm: str, data, plan, args) -> dict[str, float]:
    """Train over ``plan`` with ``arm``'s collation; useful tokens/s and padding share."""
    model = toy_model("qwen3_moe", layers=args.layers, experts=16, top_k=2, hidden=args.hidden, seed=0)
    selected = {ly.layer_index: [0, 5] for ly in find_moe_layers(model)}
    prepared = get_esft_model(model, {"experts": {str(k): v for k, v in selected.items()}})
    masters = MasterWeights(prepared.trainable_parameters())
    optimizer = build_optimizer(masters.masters, TrainingConfig(learning_rate=1e-4))
    model.train()
    useful = padded = 0
    start = time.perf_counter()
    for indices in plan:
        batch_samples = [data[i] for i in indices]
        batch = collate_packed(batch_samples) if arm == "packed" else collate(batch_samples, pad_token_id=0)
        with packed_attention(model) if arm == "packed" else contextlib.nullcontext():
            loss = answer_loss(model, batch, reduction="sum") / max(1, n_loss_tokens(batch))
            loss.backward()
        masters.grads_to_masters()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        useful += sum(len(ex.input_ids) for ex in batch_samples)
        padded += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {"useful_tokens_per_s": useful / seconds, "padding_share": 1 - useful / padded, "seconds": seconds}


def loss_rel_diff(data, plan, args) -> float:
    """Relative difference of the first step's loss, packed vs padded (same samples, same weights)."""
    model = toy_model("qwen3_moe", layers=args.layers, experts=16, top_k=2, hidden=args.hidden, seed=0).eval()
    batch_samples = [data[i] for i in plan[0]]
    with torch.no_grad():
        with packed_attention(model):
            packed = float(answer_loss(model, collate_packed(batch_samples)))
        padded = float(answer_loss(model, collate(batch_samples, pad_token_id=0)))
    return abs(packed - padded) / abs(padded)


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.samples, args.batch, args.hidden, args.layers, args.rounds = 8, 4, 64, 1, 2
    torch.manual_seed(0)
    data = samples(args.samples)
    arm_plans = plans(data, args.batch)
    for arm, plan in arm_plans.items():  # warm-up: first allocations and kernel selection, not timed
        run_arm(arm, data, plan[:2], args)
    load_before = os.getloadavg()
    rounds = []
    for r in range(args.rounds):  # the arms' order alternates, so a drift in machine speed hits each alike
        order = list(arm_plans) if r % 2 == 0 else list(reversed(arm_plans))
        rounds.append({arm: run_arm(arm, data, arm_plans[arm], args) for arm in order})
    load_after = os.getloadavg()

    def ratio(a: str, b: str) -> dict[str, float]:
        return _summary([r[a]["useful_tokens_per_s"] / r[b]["useful_tokens_per_s"] for r in rounds])

    result = {
        "config": vars(args),
        "load_average_before_after": [load_before, load_after],
        "inconclusive": max(load_before[0], load_after[0]) > (os.cpu_count() or 1),
        "packed_over_grouped": ratio("packed", "grouped"),
        "packed_over_ungrouped": ratio("packed", "ungrouped"),
        "packed_padding_share": rounds[0]["packed"]["padding_share"],
        "grouped_padding_share": rounds[0]["grouped"]["padding_share"],
        "ungrouped_padding_share": rounds[0]["ungrouped"]["padding_share"],
        "loss_rel_diff": loss_rel_diff(data, arm_plans["packed"], args),
        "rounds": rounds,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
