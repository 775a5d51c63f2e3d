"""The sizing table of docs/expert-parallel.md: ``esft plan`` for DeepSeek-V2-Lite, V2 and V3 on A100-80G nodes.

The configs are written here from the published numbers (no download); 10% of each MoE layer's experts train
(spread evenly over the ids), one 4096-token micro-batch per rank, bf16 weights.

    python scripts/ep_plan_table.py
"""

from __future__ import annotations

from transformers import DeepseekV2Config, DeepseekV3Config

from esft.parallel import plan

MLA = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
CONFIGS = {
    "DeepSeek-V2-Lite": DeepseekV2Config(
        hidden_size=2048, num_hidden_layers=27, n_routed_experts=64, moe_intermediate_size=1408,
        intermediate_size=10944, first_k_dense_replace=1, n_shared_experts=2, num_experts_per_tok=6,
        num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, vocab_size=102400, **MLA),
    "DeepSeek-V2": DeepseekV2Config(
        hidden_size=5120, num_hidden_layers=60, n_routed_experts=160, moe_intermediate_size=1536,
        intermediate_size=12288, first_k_dense_replace=1, n_shared_experts=2, num_experts_per_tok=6,
        num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, vocab_size=102400, **MLA),
    "DeepSeek-V3": DeepseekV3Config(
        hidden_size=7168, num_hidden_layers=61, n_routed_experts=256, moe_intermediate_size=2048,
        intermediate_size=18432, first_k_dense_replace=3, n_shared_experts=1, num_experts_per_tok=8,
        num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, vocab_size=129280, **MLA),
}


def main() -> None:
    print("| model | params | layout | ep_size | frozen | trained rows | AdamW | activations | total (GiB/rank) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, config in CONFIGS.items():
        sizes = plan.model_sizes(config)
        experts = plan.uniform_selection(sizes.num_experts, sorted(sizes.per_expert), 0.1)
        for checkpointing in (False, True):
            fits, _ = plan.smallest_layout(sizes, experts, gpus_per_node=8, gpu_memory=plan.parse_bytes("80GiB"),
                                           batch_tokens=4096, activation_checkpointing=checkpointing)
            if fits is None:
                print(f"| {name} | {sizes.total / 1e9:.1f}B | none up to 64 x 8 | | | | | | |")
                continue
            m = fits
            layout = f"{m.nodes} x {m.gpus_per_node}" + (" (act. ckpt)" if checkpointing else "")
            print(f"| {name} | {sizes.total / 1e9:.1f}B | {layout} | {m.ep_size} | {plan.gib(m.frozen_weights)} | "
                  f"{plan.gib(m.trained_rows)} | {plan.gib(m.adamw_state)} | {plan.gib(m.activations)} | "
                  f"{plan.gib(m.total)} |")


if __name__ == "__main__":
    main()
