"""Expert-parallel ESFT on CPU (gloo) at world sizes 1, 2 and 4: per-rank peak memory, frozen-weight bytes per
rank, all-to-all bytes per step, and tokens/s (information only: on a 2-core machine 4 ranks share 2 cores).
Prints one JSON object.

World size 1 is single-process ESFT (no expert parallelism); world size W shards the experts over W ranks
(``ep_size = W``, dense weights sharded by FSDP2). The all-to-all bytes are those sent by the forward
exchanges of every MoE layer (dispatch and combine, summed over ranks, rows a rank keeps for itself included);
the backward repeats the exchanges that carry gradients.

    python bench/expert_parallel.py            # hidden 256, 4 layers, 16 experts top-4, 10 steps
    python bench/expert_parallel.py --quick    # a seconds-long smoke run

On GPUs (one node of N devices, or M nodes): ``esft train ... --nproc-per-node N [--nnodes M --node-rank R
--master-addr A] --ep-size E`` runs the same code with nccl; ``esft plan`` sizes the layout first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _examples(args):
    from esft.constants import IGNORE_INDEX
    from esft.data.tokenize import TokenizedExample

    g = torch.Generator().manual_seed(1)
    rows = torch.randint(3, args.vocab, (args.examples, args.seq), generator=g).tolist()
    return [TokenizedExample(r, [IGNORE_INDEX] * 4 + r[4:], False, i) for i, r in enumerate(rows)]


def _rank(rank: int, world_size: int, args, model_dir: str, out_dir: str) -> None:
    from torch.distributed.tensor import DTensor
    from transformers.distributed import expert_parallel as upstream

    from esft import get_esft_model
    from esft.config import TrainingConfig
    from esft.models.loading import load_model
    from esft.parallel.expert_parallel import get_esft_model_expert_parallel, load_expert_parallel
    from esft.training.loop import train

    torch.set_num_threads(1)
    sent = [0]
    exchange = upstream.all_to_all_single_autograd

    def counting(tensor, *rest, **kwargs):  # bytes this rank sends in one forward exchange
        sent[0] += tensor.numel() * tensor.element_size()
        return exchange(tensor, *rest, **kwargs)

    upstream.all_to_all_single_autograd = counting
    experts = {"experts": {str(i): list(range(0, args.experts, 4)) for i in range(args.layers)}}
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdzv", rank=rank, world_size=world_size)
        model, tokenizer = load_expert_parallel(model_dir, ep_size=world_size)
        prepared = get_esft_model_expert_parallel(model, experts)
    else:
        model, tokenizer = load_model(model_dir, device="cpu")
        prepared = get_esft_model(model, experts)
    frozen = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
                 for p in model.parameters() if not p.requires_grad)
    config = TrainingConfig(max_steps=args.steps, batch_size=args.batch, grad_accum_steps=4 // world_size,
                            learning_rate=1e-4)
    start = time.perf_counter()
    result = train(prepared, _examples(args), config, pad_token_id=0)
    elapsed = time.perf_counter() - start
    report = {"rank": rank, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "frozen_weight_bytes": frozen, "all_to_all_forward_bytes_sent": sent[0] // args.steps,
              "trained_tokens": result.trained_tokens, "seconds": elapsed}
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(report))
    if world_size > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps")
    parser.add_argument("--worlds", default="1,2,4")
    args = parser.parse_args()
    size = dict(hidden=64, layers=2, experts=8, top_k=2, seq=32, steps=2) if args.quick else \
        dict(hidden=256, layers=4, experts=16, top_k=4, seq=256, steps=10)
    for key, value in {**size, "batch": 2, "vocab": 512, "examples": 256}.items():
        setattr(args, key, value)
    from esft.models.toy import build_toy_model

    results = {"config": {k: getattr(args, k) for k in ("hidden", "layers", "experts", "top_k", "seq", "steps",
                                                        "batch")}, "global_batch": 4 * args.batch, "worlds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_toy_model(Path(tmp) / "model", family="qwen3_moe", layers=args.layers,
                                        experts=args.experts, top_k=args.top_k, hidden=args.hidden))
        for world_size in (int(w) for w in args.worlds.split(",")):
            out_dir = Path(tmp) / f"world-{world_size}"
            out_dir.mkdir()
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            mp.spawn(_rank, args=(world_size, args, model_dir, str(out_dir)), nprocs=world_size, join=True)
            ranks = [json.loads(Path(out_dir, f"rank-{r}.json").read_text()) for r in range(world_size)]
            seconds = max(r["seconds"] for r in ranks)
            results["worlds"][world_size] = {
                "peak_rss_bytes_per_rank": [r["peak_rss_bytes"] for r in ranks],
                "frozen_weight_bytes_per_rank": [r["frozen_weight_bytes"] for r in ranks],
                "all_to_all_forward_bytes_per_step": sum(r["all_to_all_forward_bytes_sent"] for r in ranks),
                "tokens_per_s_information_only": ranks[0]["trained_tokens"] / seconds,
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
