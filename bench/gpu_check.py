"""ESFT on a CUDA device: the split-training invariants and adapter round trip on the GPU, packed attention,
ESFT-LoRA trained and served by the engine, then ESFT vs full fine-tuning step time on a mid-sized model.
Prints one JSON object. Needs a GPU; exits 2 without one.

The CPU test suite proves the invariants on every family; this checks that the device-handling code paths
(index buffers, routing sums, master weights, adapters, per-sample attention segments, expert slots) behave
the same on CUDA, in fp32 and bf16.

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
from pathlib import Path

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


def check_packed(family: str, dtype: torch.dtype) -> dict:
    """Largest logit difference between three samples packed in one row and each sample run alone."""
    from esft.data.batching import collate_packed
    from esft.data.tokenize import TokenizedExample
    from esft.models.packed_attention import packed_attention
    from esft.models.toy import toy_model

    model = toy_model(family, layers=2, experts=8, top_k=2, hidden=64).to(DEVICE, dtype)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 500, (n,), generator=generator).tolist() for n in (7, 12, 4)]
    samples = [TokenizedExample(ids, ids, False, i + 1) for i, ids in enumerate(rows)]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([ex.input_ids], device=DEVICE), use_cache=False).logits[0]
                           for ex in samples])
        packed = {k: v.to(DEVICE) for k, v in collate_packed(samples).items() if k != "labels"}
        with packed_attention(model):
            row = model(**packed, use_cache=False).logits[0]
    return {"max_abs_diff": float((row.float() - alone.float()).abs().max()),
            "max_abs_logit": float(alone.float().abs().max())}


def check_esft_lora(dtype: torch.dtype) -> dict:
    """ESFT-LoRA on the shipped pretrained toy: train the selected experts' factors, fold; serve the saved
    adapter through the engine's expert slots (rows materialised in the base dtype) and compare with the
    adapter applied by hand; the engine's base weights are bit-exact after it closes."""
    import tempfile

    from esft.adapters import applied
    from esft.expert_config import ExpertConfig
    from esft.generation import encode_prompt, generate_ids, stop_token_ids
    from esft.methods.esft_lora import ESFTLoRAConfig, expert_rows_adapter, get_esft_lora_model
    from esft.models.discovery import find_moe_layers
    from esft.models.loading import load_model
    from esft.serving import Engine, EngineConfig, GenerationRequest, SamplingParams, dict_resolver
    from esft.synthetic.pretrained import SHIPPED_DIR

    name = str(dtype).removeprefix("torch.")
    model, tokenizer = load_model(SHIPPED_DIR, dtype=name, device=DEVICE)
    model = model.to(dtype)  # the shipped weights are bf16 whatever "auto" would say
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    selected = ExpertConfig({layer.layer_index: SELECTED for layer in find_moe_layers(model)})
    prepared = get_esft_lora_model(model, ESFTLoRAConfig(rank=4, expert_config=selected))
    ids = torch.randint(5, len(tokenizer), (4, 32), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    optimizer = torch.optim.AdamW(prepared.trainable_parameters().values(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        prepared(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = Path(tempfile.mkdtemp()) / "adapter"
    prepared.save_pretrained(out)
    folded = prepared.fold()
    others = [i for i in range(folded.config.n_routed_experts) if i not in SELECTED]
    frozen_ok = all(torch.equal(p[others], before[n][others]) if ".mlp.experts." in n else torch.equal(p, before[n])
                    for n, p in folded.named_parameters())
    base, _ = load_model(SHIPPED_DIR, dtype=name, device=DEVICE)
    base = base.to(dtype)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    rows = expert_rows_adapter(out, base)
    stop = sorted(stop_token_ids(tokenizer, base.generation_config))
    prompts = ["12 + 7 =", "reverse: esft", "capital of lofa?", "upper: moe"]
    with applied(base, rows):
        want = [generate_ids(base, encode_prompt(tokenizer, p), max_new_tokens=8, eos_token_id=stop) for p in prompts]
    want = [w[:-1] if w and w[-1] in stop else w for w in want]
    config = EngineConfig(batching="mixed", max_new_tokens=8, slot_rows=8, device=DEVICE)
    with Engine(base, tokenizer, resolver=dict_resolver({"lora": out}), config=config) as engine:
        engine.start()
        handles = [engine.submit(GenerationRequest(engine.encode(p), "lora", SamplingParams(max_tokens=8)))
                   for p in prompts]
        got = [h.result(120).token_ids for h in handles]
        engine.close()
    return {"frozen_bit_identical": frozen_ok,
            "rows_in_base_dtype": all(t.dtype == dtype for t in rows.tensors.values()),
            "engine_equals_applied": got == want, "served_tokens": sum(len(g) for g in got),
            "restore_bit_exact": all(torch.equal(v, base.state_dict()[k]) for k, v in reference.items())}


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
    parser.add_argument("--no-timing", action="store_true", help="only the checks")
    parser.add_argument("--cpu", action="store_true", help="dry run of the script on the CPU (no GPU figures)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.cpu else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    if args.quick:
        args.hidden, args.layers, args.batch, args.seq, args.steps, args.rounds = 256, 2, 2, 128, 3, 1
    dtypes = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16)}
    checks = {f"{family}/{name}": check_family(family, dtype) for family in FAMILIES for name, dtype in dtypes.items()}
    packed = {f"{family}/{name}": check_packed(family, dtype) for family in FAMILIES for name, dtype in dtypes.items()}
    esft_lora = {name: check_esft_lora(dtype) for name, dtype in dtypes.items()}
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "checks": checks, "packed": packed,
              "esft_lora": esft_lora, "timing": None if args.no_timing else time_esft_vs_fft(args)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
