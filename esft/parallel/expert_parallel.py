"""Expert parallelism for ESFT, on transformers' own expert parallelism (``DistributedConfig(ep_size=...)``).

The model is loaded with ``DistributedConfig(fsdp_size=world, ep_size=E, ep_implementation="esft_all_to_all")``:
each rank keeps ``num_experts / E`` whole experts of every layer (``Shard(0)`` on the expert mesh), dense frozen
weights are sharded by FSDP2, and every MoE layer sends each (token, expert) pair to the expert's owner with
transformers' all-to-all. After the tokens arrive, the owner runs its local experts through ESFT's one-pass
kernel (``esft.methods.esft.one_pass``): one grouped product for all local experts, weight gradients only for
the selected experts this rank owns, landing on fp32 master rows. Nothing else has a gradient or AdamW state.
A rank whose selected experts receive no tokens still runs the kernel on an empty (or one dummy) row, so it
joins every collective of the forward and the backward.

Gradient-scaling contract (tested against one process): every trained tensor's gradient equals the
single-process gradient of the same global batch.

- The loss of each micro-batch is the sum of its token losses divided by the target count of the whole global
  window (all ranks, all accumulation steps); nothing is divided by the world size.
- Inside one expert-parallel group the all-to-all brings every token routed to an expert to its owner, so an
  owner's master-row gradient already sums that group's data. It is summed (not averaged) only across the
  replicas of the same experts (ranks with the same expert-parallel rank: ``world / ep_size`` of them), never
  over the whole world.
- No trained tensor is FSDP-managed (dense weights are frozen; the paper's shared / non-expert variants are
  refused under expert parallelism), so FSDP2's averaging divides nothing.
- Clipping uses the global norm: squared norms of the rows each rank owns, summed over one replica of every
  expert-parallel group, the same coefficient applied on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate
from transformers.distributed.expert_parallel import AllToAllEP, EPImplementationInterface

from esft.adapters.adapter import ESFTAdapter
from esft.errors import ConfigError, ESFTError
from esft.expert_config import ExpertConfig
from esft.methods.esft import one_pass
from esft.methods.esft.config import ExpertConfigLike, as_expert_config
from esft.models.discovery import MoELayer, find_moe_layers
from esft.models.identity import identity_of
from esft.parallel.data_parallel import world

EP_IMPLEMENTATION = "esft_all_to_all"


class ESFTAllToAll(AllToAllEP):
    """transformers' all-to-all dispatch; the experts it reaches run ESFT's one-pass kernel on the local shard.

    It records on the experts module which global experts this rank owns, so ``ExpertParallelESFT`` can map
    the expert config's global ids to local rows. The expert output of a layer with selected experts requires
    grad on every rank, also where this rank owns none of them (a zero-row master joins the graph): the
    backward of the exchange is a collective, so it must be in every rank's graph or in none.
    """

    def __init__(self, experts: nn.Module, ep_mesh, tp_mesh):
        super().__init__(experts, ep_mesh, tp_mesh)
        if tp_mesh.size() > 1:
            raise ConfigError("ESFT under expert parallelism runs without tensor parallelism (tp_size=1)",
                              param="tp_size")
        experts._esft_first_expert = ep_mesh.get_local_rank() * self.num_local_experts
        experts._esft_dispatch = self
        self.anchor: list[nn.Parameter] = []  # zero-row masters of a layer whose selected experts are elsewhere

    def __call__(self, hidden_states, top_k_index, top_k_weights):
        tokens, expert_ids, weights, state = self._dispatch_tokens(hidden_states, top_k_index, top_k_weights)
        if tokens.shape[0] == 0:  # keep the empty rows in the graph (the backward exchange still runs)
            output = self.experts_forward(tokens.sum(dim=0, keepdim=True), expert_ids.new_zeros((1, 1)),
                                          weights.new_ones((1, 1)))[:0]
        else:
            output = self.experts_forward(tokens, expert_ids, weights)
        for master in self.anchor:
            output = output + master.sum().to(output.dtype)  # the sum of zero rows: 0, with a grad path
        return self._combine_tokens(output, state)


EPImplementationInterface.register(EP_IMPLEMENTATION, ESFTAllToAll)


@dataclass(frozen=True)
class Layout:
    """Where this rank sits: ``world = replicas * ep_size``; rank ``r`` owns expert block ``r % ep_size``."""

    rank: int
    world_size: int
    ep_size: int

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep_size

    @property
    def replica(self) -> int:
        return self.rank // self.ep_size

    @property
    def replicas(self) -> int:
        return self.world_size // self.ep_size


def check_layout(world_size: int, ep_size: int, num_experts: int) -> None:
    """``ep_size`` must divide the world size and every layer's expert count.

    Raises:
        ESFTError: code ``world_size_mismatch``, naming the sizes and the fix.
    """
    if ep_size < 1 or world_size % ep_size or num_experts % ep_size:
        raise ESFTError(f"`ep_size`={ep_size} must divide both the world size ({world_size}) and the number of "
                        f"routed experts per layer ({num_experts}); choose a divisor of both",
                        param="ep_size", code="world_size_mismatch")


def load_expert_parallel(model_dir: str | Path, *, ep_size: int, dtype: str = "auto"):
    """Load ``model_dir`` with its experts sharded over ``ep_size`` ranks; returns ``(model, tokenizer)``.

    Call it on every rank after the process group is initialised (``torchrun`` or ``esft train
    --nproc-per-node``). Dense weights are sharded over all ranks by FSDP2 (``fsdp_size`` = world size).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.distributed import DistributedConfig

    from esft.models.loading import _DTYPES

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("`ep_size` shards experts over the ranks of a process group: launch with "
                          "`--nproc-per-node N` (or torchrun)", param="ep_size")
    rank, world_size = world()
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    num_experts = next((getattr(config, n) for n in ("n_routed_experts", "num_experts", "num_local_experts")
                        if isinstance(getattr(config, n, None), int)), None)
    if num_experts is None:
        raise ConfigError(f"{model_dir}: the config names no routed-expert count", param="model")
    check_layout(world_size, ep_size, num_experts)
    distributed = DistributedConfig(fsdp_size=world_size, ep_size=ep_size, ep_implementation=EP_IMPLEMENTATION)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=_DTYPES.get(dtype, "auto"), local_files_only=True, distributed_config=distributed,
        experts_implementation="grouped_mm")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@dataclass
class OwnedRows:
    """The selected experts of one layer that this rank owns, trained through the one-pass kernel."""

    layer: MoELayer
    global_ids: list[int]  # ascending; may be empty (then ``masters`` hold zero rows)
    masters: dict[str, nn.Parameter]  # fused-parameter name -> [len(global_ids), ...] fp32 rows
    state: one_pass.TrainedRows | None  # None when this rank owns none of the layer's selected experts


@dataclass
class ExpertParallelESFT:
    """A model loaded with ``load_expert_parallel`` and prepared for ESFT: what ``esft.train`` trains under EP.

    ``trainable_parameters()`` holds, for every layer with selected experts, the rows this rank owns (possibly
    zero rows), under the same names on every rank. ``parallel`` is the loop's gradient and checkpoint policy.
    """

    model: nn.Module
    config: ExpertConfig
    layers: list[MoELayer]
    layout: Layout
    owned: dict[int, OwnedRows] = field(default_factory=dict)
    replica_group: Any = None  # process group of the ranks holding the same experts (None: no replicas)
    method = "esft"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def parallel(self):
        from esft.parallel.expert_checkpoint import ExpertParallelPolicy

        return ExpertParallelPolicy(self)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{rows.layer.experts_name}.{name}": p for rows in self.owned.values()
                for name, p in rows.masters.items()}

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "experts": self.config.to_dict()["experts"],
                "shared_experts": self.config.shared_experts, "non_expert_modules": self.config.non_expert_modules}

    def global_ids(self) -> dict[str, list[int]]:
        """Trainable-parameter name -> the global expert id of each of its rows."""
        return {f"{rows.layer.experts_name}.{name}": rows.global_ids for rows in self.owned.values()
                for name in rows.masters}

    def reduce_gradients(self) -> None:
        """Sum master-row gradients over the replicas of the same experts (and nowhere else)."""
        params = list(self.trainable_parameters().values())
        for p in params:
            if p.grad is None:  # every rank joins every collective, in the same order
                p.grad = torch.zeros_like(p)
        if self.replica_group is not None:
            for p in params:
                dist.all_reduce(p.grad, group=self.replica_group)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip every rank's rows by the norm of the whole model's trained gradient; returns that norm."""
        params = [p for p in self.trainable_parameters().values() if p.grad is not None]
        local = sum((p.grad.double().pow(2).sum() for p in params), torch.zeros((), dtype=torch.float64))
        if self.layout.replica != 0:  # each expert block counted once
            local = torch.zeros_like(local)
        dist.all_reduce(local)
        norm = float(local.sqrt())
        coef = min(1.0, max_norm / (norm + 1e-6))
        if coef < 1.0:
            for p in params:
                p.grad.mul_(coef)
        return norm

    def gather_rows(self) -> dict[str, torch.Tensor] | None:
        """Every trained row on rank 0 as ``[n_selected, ...]`` tensors in ascending global id (else None).

        Each tensor is summed onto rank 0 from zeros in which one replica of each owner filled its rows, so the
        values arrive bit-exact (x + 0 = x) and nothing is pickled on the way.
        """
        params, ids = self.trainable_parameters(), self.global_ids()
        out = {}
        for layer in self.layers:
            selected = sorted(self.config.experts.get(layer.layer_index, []))
            for name in layer.expert_params if selected else ():
                key = f"{layer.experts_name}.{name}"
                mine = params[key].detach()
                full = mine.new_zeros((len(selected), *mine.shape[1:]))
                if self.layout.replica == 0 and ids[key]:
                    full[torch.tensor([selected.index(g) for g in ids[key]])] = mine
                dist.reduce(full, dst=0)
                out[key] = full.cpu()
        return out if self.layout.rank == 0 else None

    def adapter(self, metadata: dict[str, Any] | None = None) -> ESFTAdapter | None:
        """The ordinary ESFT adapter on rank 0 (None elsewhere); every rank must call it (a collective)."""
        rows = self.gather_rows()
        if rows is None:
            return None
        dtype = _frozen_dtype(self.model)
        tensors = {k: v.to(dtype).contiguous() for k, v in rows.items()}
        by_name = {ly.experts_name: ly.layer_index for ly in self.layers}
        row_tensors = {k: by_name[k.rpartition(".")[0]] for k in tensors}
        if not self.config.base_model:
            self.config.base_model = identity_of(self.model.config)
        return ESFTAdapter(self.config, tensors, row_tensors, dict(metadata or {}))

    def write_files(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the adapter into ``directory``; every rank must call it."""
        adapter = self.adapter(metadata)
        if adapter is not None:
            adapter.write_files(Path(directory))

    @torch.no_grad()
    def refresh_shards(self) -> None:
        """Copy the masters into this rank's frozen expert shard (before the next forward gathers it)."""
        for rows in self.owned.values():
            if rows.state is None:
                continue
            experts = rows.layer.experts(self.model)
            for name, master in rows.masters.items():
                _write_rows(experts._parameters[name], rows.state.selected, master, self.layout)
            rows.state.versions = {name: m._version for name, m in rows.masters.items()}


def _frozen_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _local_block(param: torch.Tensor) -> torch.Tensor:
    """This rank's whole expert block ``[E / ep_size, ...]`` of a fused parameter (gathered over FSDP)."""
    if not isinstance(param, DTensor):
        return param
    mesh = param.device_mesh
    placements = [Replicate()] * (mesh.ndim - 1) + [param.placements[-1]]
    return param.redistribute(mesh, placements).to_local()


def _write_rows(param: torch.Tensor, local_ids: torch.Tensor, master: torch.Tensor, layout: Layout) -> None:
    """Write ``master`` rows (local expert ids ``local_ids``) into whatever part of the block this rank stores."""
    local = param.to_local() if isinstance(param, DTensor) else param
    if isinstance(param, DTensor) and param.device_mesh.ndim > 1:  # FSDP chunks the block over the replicas
        per_rank = -(-param.shape[0] // layout.ep_size // layout.replicas)
        start = layout.replica * per_rank
        keep = (local_ids >= start) & (local_ids < start + local.shape[0])
        local_ids, master = local_ids[keep] - start, master[keep]
    local.index_copy_(0, local_ids, master.detach().to(local.dtype))


def get_esft_model_expert_parallel(model: nn.Module, expert_config: ExpertConfigLike) -> ExpertParallelESFT:
    """Freeze an expert-parallel ``model`` and train the selected experts each rank owns (in place).

    Every rank must call it (it creates the replica process groups).

    Raises:
        ConfigError: the config asks for shared-expert / non-expert variants, or a layer's layout has no
            one-pass kernel.
        AdapterMismatchError: the config names layers or experts the model lacks.
    """
    config = as_expert_config(expert_config)
    if config.shared_experts or config.non_expert_modules:
        raise ConfigError("the shared-expert and non-expert variants are not trained under expert parallelism "
                          "yet; train them without `ep_size` (data parallel)", param="ep_size")
    rank, world_size = world()
    layers = find_moe_layers(model)
    config.check_model(identity_of(model.config), {ly.layer_index: ly.num_experts for ly in layers})
    experts0 = layers[0].experts(model)
    ep_size = layers[0].num_experts // int(experts0.num_experts)
    layout = Layout(rank, world_size, ep_size)
    model.requires_grad_(False)
    prepared = ExpertParallelESFT(model, config, layers, layout)
    for layer in layers:
        selected = config.experts.get(layer.layer_index, [])
        experts = layer.experts(model)
        first = int(getattr(experts, "_esft_first_expert", 0))
        if first != layout.ep_rank * int(experts.num_experts):  # replica groups assume ep is the innermost mesh dim
            raise ConfigError(f"rank {rank} owns experts from {first}, expected {layout.ep_rank * experts.num_experts}:"
                              " this transformers lays out the expert mesh differently", param="ep_size")
        if selected:
            prepared.owned[layer.layer_index] = _own_rows(experts, layer, selected)
    prepared.replica_group = _replica_group(layout)
    return prepared


def _own_rows(experts: nn.Module, layer: MoELayer, selected: list[int]) -> OwnedRows:
    reason = one_pass.one_pass_reason(experts, layer.expert_params)
    if reason:
        raise ConfigError(f"layer {layer.layer_index} cannot train under expert parallelism: {reason}",
                          param="ep_size")
    n_local, first = int(experts.num_experts), int(getattr(experts, "_esft_first_expert", 0))  # 0: ep_size 1
    mine = [g for g in sorted(selected) if first <= g < first + n_local]
    blocks = {name: _local_block(experts._parameters[name]) for name in layer.expert_params}
    if not mine:
        masters = {name: nn.Parameter(block[:0].detach().float().clone()) for name, block in blocks.items()}
        if hasattr(experts, "_esft_dispatch"):  # absent with ep_size 1 (nothing exchanged)
            experts._esft_dispatch.anchor = list(masters.values())
        return OwnedRows(layer, [], masters, None)
    # one_pass.attach reads rows through getattr: hand it the gathered block for the duration
    shards = {name: experts._parameters[name] for name in layer.expert_params}
    experts._parameters.update(blocks)
    try:
        state = one_pass.attach(experts, [g - first for g in mine], layer.expert_params, torch.float32)
    finally:
        experts._parameters.update(shards)
    return OwnedRows(layer, mine, dict(state.masters), state)


def _replica_group(layout: Layout):
    """The process group of the ranks holding this rank's experts (every rank creates every group)."""
    if layout.replicas == 1:
        return None
    mine = None
    for ep_rank in range(layout.ep_size):
        group = dist.new_group([ep_rank + r * layout.ep_size for r in range(layout.replicas)])
        if ep_rank == layout.ep_rank:
            mine = group
    return mine
