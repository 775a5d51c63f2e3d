"""ExpertSlots: adapters' experts as extra expert rows next to the base experts, for mixed-adapter batches.

Every fused expert parameter ``[E, ...]`` of every MoE layer grows to ``[E + R, ...]`` and the experts
module's ``num_experts`` to ``E + R`` (it sizes the kernels' expert bins). An adapter placed in the slots
copies its rows into free slot rows ``E + r``; a routing table per layer maps ``(adapter, expert e)`` to
``e`` (base) or to the adapter's slot row. A forward pre-hook on each experts module rewrites the
router's ``top_k_index [T, K]`` row by row: rows are batch-major (``T = B * S``), so row ``t`` belongs to
request ``t // S`` for prefill and KV-cache decode alike. One forward pass then serves requests for
different adapters; the base rows are never written, and the memory cost is ``R`` experts per layer.

Not thread-safe by itself: the engine mutates slots only from its scheduler thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from esft.adapters import ESFTAdapter
from esft.models.discovery import MoELayer, find_moe_layers
from esft.serving.swap import row_runs

RowAdapters = int | torch.Tensor | None
"""Which table row each batch row uses: ``None`` (all base), one int for all, or ``[B]`` long tensor."""


@dataclass
class _Layer:
    """The slot state of one MoE layer."""

    info: MoELayer
    module: nn.Module
    base_experts: int
    table: torch.Tensor  # [max_adapters + 1, E] expert id -> row to use; row 0 is the identity
    free: list[int] = field(default_factory=list)  # free slot offsets in [0, R)


@dataclass
class Resident:
    """An adapter placed in the slots: its routing-table row and the slot offsets it holds per layer."""

    name: str
    index: int
    offsets: dict[int, list[int]]
    last_used: int = 0


class ExpertSlots:
    """Extra expert rows holding adapters' experts, and the routing remap that serves them.

    Args:
        model: the base model (its experts modules are extended in place; ``detach`` undoes it).
        rows_per_layer: slot rows ``R`` added to every MoE layer.
        max_adapters: adapters resident at once (rows of the routing tables).

    >>> slots = ExpertSlots(model, rows_per_layer=8, max_adapters=4)  # doctest: +SKIP
    >>> slots.place("math", adapter); slots.set_rows(torch.tensor([0, 1]))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, rows_per_layer: int, max_adapters: int):
        self.model = model
        self.rows_per_layer = rows_per_layer
        self.max_adapters = max_adapters
        self.residents: dict[str, Resident] = {}
        self._free_indices = list(range(1, max_adapters + 1))
        self._rows: RowAdapters = None
        self._clock = 0
        self._layers = {info.layer_index: self._extend(info) for info in find_moe_layers(model)}
        self._device = next(iter(self._layers.values())).table.device
        self._hooks = [
            layer.module.register_forward_pre_hook(self._hook(layer), with_kwargs=True)
            for layer in self._layers.values()
        ]

    @torch.no_grad()
    def _extend(self, info: MoELayer) -> _Layer:
        module = info.experts(self.model)
        for name in info.expert_params:
            param = getattr(module, name)
            grown = torch.cat([param.detach(), param.new_zeros(self.rows_per_layer, *param.shape[1:])])
            setattr(module, name, nn.Parameter(grown, requires_grad=param.requires_grad))
        base = info.num_experts
        module.num_experts = base + self.rows_per_layer
        device = getattr(module, info.expert_params[0]).device
        table = torch.arange(base, device=device).repeat(self.max_adapters + 1, 1)
        return _Layer(info, module, base, table, list(range(self.rows_per_layer)))

    @property
    def slot_bytes(self) -> int:
        """Bytes the slot rows add to the model."""
        total = 0
        for layer in self._layers.values():
            for name in layer.info.expert_params:
                param = getattr(layer.module, name)
                total += self.rows_per_layer * param[0].numel() * param.element_size()
        return total

    def fits(self, adapter: ESFTAdapter) -> bool:
        """True if the adapter only replaces expert rows and each layer's experts fit the slot rows."""
        if set(adapter.tensors) != set(adapter.row_tensors):
            return False  # dense tensors (shared experts, non-expert modules) cannot live in slots
        experts = adapter.expert_config.experts
        return all(layer in self._layers and len(ids) <= self.rows_per_layer for layer, ids in experts.items())

    def index_of(self, name: str) -> int | None:
        """The routing-table row of a resident adapter (and mark it recently used)."""
        resident = self.residents.get(name)
        if resident is None:
            return None
        self._clock += 1
        resident.last_used = self._clock
        return resident.index

    def place(self, name: str, adapter: ESFTAdapter, *, keep: set[str] = frozenset()) -> int | None:
        """Copy ``adapter``'s experts into free slot rows and return its table row.

        Least recently used residents not in ``keep`` are evicted to make room. Returns ``None`` when the
        adapter cannot be placed now (every evictable resident is in ``keep``).
        """
        if name in self.residents:
            return self.index_of(name)
        while not self._has_room(adapter):
            victims = sorted((r for r in self.residents.values() if r.name not in keep), key=lambda r: r.last_used)
            if not victims:
                return None
            self.evict(victims[0].name)
        index = self._free_indices.pop(0)
        offsets = {layer: self._take(layer, len(ids)) for layer, ids in adapter.expert_config.experts.items()}
        self._write(adapter, index, offsets)
        self.residents[name] = Resident(name, index, offsets)
        return self.index_of(name)

    def _has_room(self, adapter: ESFTAdapter) -> bool:
        if not self._free_indices:
            return False
        return all(len(ids) <= len(self._layers[layer].free) for layer, ids in adapter.expert_config.experts.items())

    def _take(self, layer: int, n: int) -> list[int]:
        free = self._layers[layer].free
        taken, free[:] = free[:n], free[n:]
        return taken

    @torch.no_grad()
    def _write(self, adapter: ESFTAdapter, index: int, offsets: dict[int, list[int]]) -> None:
        for layer_index, ids in adapter.expert_config.experts.items():
            layer = self._layers[layer_index]
            device = layer.table.device
            expert_ids = torch.tensor(ids, device=device)
            slot_rows = [layer.base_experts + offset for offset in offsets[layer_index]]
            for name in layer.info.expert_params:
                param = getattr(layer.module, name)
                rows = adapter.tensors.get(f"{layer.info.experts_name}.{name}")
                if rows is None:  # an expert param the adapter did not save: its base rows
                    rows = param[expert_ids]
                for start, count, first in row_runs(slot_rows):  # free rows are handed out in order: one run
                    param.narrow(0, start, count).copy_(rows.narrow(0, first, count))
            layer.table[index].index_copy_(0, expert_ids, torch.tensor(slot_rows, device=device))

    def evict(self, name: str) -> bool:
        """Free an adapter's slot rows (no weights are written: the rows are just no longer routed to)."""
        resident = self.residents.pop(name, None)
        if resident is None:
            return False
        for layer_index, offsets in resident.offsets.items():
            layer = self._layers[layer_index]
            layer.free = sorted(layer.free + offsets)
            layer.table[resident.index] = torch.arange(layer.base_experts, device=layer.table.device)
        self._free_indices = sorted(self._free_indices + [resident.index])
        return True

    def set_rows(self, rows: RowAdapters) -> None:
        """Set which table row each batch row of the next forward passes uses."""
        if isinstance(rows, torch.Tensor):
            uniform = rows.numel() and bool((rows == rows[0]).all())
            rows = int(rows[0]) if uniform else rows.to(self._device)
        self._rows = None if isinstance(rows, int) and rows == 0 else rows

    def _hook(self, layer: _Layer):
        def remap(module: nn.Module, args: tuple, kwargs: dict):
            rows = self._rows
            if rows is None:
                return None
            if len(args) >= 2:
                return (args[0], self._remap(layer.table, args[1], rows), *args[2:]), kwargs
            return args, {**kwargs, "top_k_index": self._remap(layer.table, kwargs["top_k_index"], rows)}

        return remap

    @staticmethod
    def _remap(table: torch.Tensor, top_k_index: torch.Tensor, rows: int | torch.Tensor) -> torch.Tensor:
        ids = top_k_index.long()  # [T, K] base expert ids chosen by the router
        if isinstance(rows, int):
            return table[rows][ids].to(top_k_index.dtype)
        tokens, batch = ids.shape[0], rows.shape[0]
        if tokens % batch:
            raise RuntimeError(f"experts got {tokens} token rows for a batch of {batch}; rows must be batch-major")
        per_token = rows.repeat_interleave(tokens // batch)  # [T] table row of each token
        return table[per_token.unsqueeze(1), ids].to(top_k_index.dtype)

    @torch.no_grad()
    def detach(self) -> None:
        """Remove the hooks and shrink every experts module back to its base rows (bit-exact)."""
        for hook in self._hooks:
            hook.remove()
        for layer in self._layers.values():
            for name in layer.info.expert_params:
                param = getattr(layer.module, name)
                base = param[: layer.base_experts].clone()
                setattr(layer.module, name, nn.Parameter(base, requires_grad=param.requires_grad))
            layer.module.num_experts = layer.base_experts
        self._hooks, self.residents, self._rows = [], {}, None
