"""HotSwap: apply an adapter in place and restore the base weights, at memory-copy speed, bit-exactly.

``esft.adapters.apply_adapter`` saves the replaced rows on every apply (a fresh ``index_select``). A
server swaps the same adapters again and again, so this keeps, per adapter, a snapshot of the base
rows it replaces (taken once, while the base weights are in place): apply is one copy of the adapter's
bytes in, restore one copy of the snapshot back, one op per parameter (a plain ``copy_`` when the rows
are contiguous, else ``index_copy_``; few ops matter on a GPU, where each is a kernel launch, and on a
busy CPU, where each is a parallel region). Snapshots of the least recently swapped adapters are
dropped past ``max_plans``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from esft.adapters import ESFTAdapter

Run = tuple[int, int, int]  # (first row in the parameter, rows, first row in the adapter tensor)


@dataclass
class _Copy:
    """How one adapter tensor lands in one model parameter."""

    param: torch.Tensor
    source: torch.Tensor  # the adapter's rows (or whole tensor)
    snapshot: torch.Tensor  # the base rows (or whole tensor) it replaces, on the parameter's device
    runs: list[Run] | None  # None: a whole (dense) tensor
    ids: torch.Tensor | None = None  # the expert rows, on the parameter's device


def row_runs(ids: list[int]) -> list[Run]:
    """Group sorted expert ids into runs of consecutive rows: [1, 2, 3, 7] -> [(1, 3, 0), (7, 1, 3)]."""
    runs: list[Run] = []
    for offset, expert in enumerate(ids):
        if runs and runs[-1][0] + runs[-1][1] == expert:
            start, count, first = runs[-1]
            runs[-1] = (start, count + 1, first)
        else:
            runs.append((expert, 1, offset))
    return runs


class HotSwap:
    """Applies one adapter at a time to ``model`` in place; ``restore`` puts the base weights back exactly.

    The caller serialises calls and must only ``apply`` while the base weights are in place.

    >>> swap = HotSwap(model)  # doctest: +SKIP
    >>> swap.apply("math", adapter); ...; swap.restore()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, max_plans: int = 4):
        self.model = model
        self.max_plans = max_plans
        self._plans: OrderedDict[str, tuple[ESFTAdapter, list[_Copy]]] = OrderedDict()
        self.active: str | None = None

    @torch.no_grad()
    def _plan(self, adapter: ESFTAdapter) -> list[_Copy]:
        plan = []
        for key, tensor in adapter.tensors.items():
            param = self.model.get_parameter(key)
            if key not in adapter.row_tensors:
                plan.append(_Copy(param, tensor, param.detach().clone(), None))
                continue
            ids = adapter.expert_config.experts[adapter.row_tensors[key]]
            index = torch.tensor(ids, device=param.device)
            snapshot = param[index].clone()
            plan.append(_Copy(param, tensor, snapshot, row_runs(ids), index))
        return plan

    def _plan_for(self, name: str, adapter: ESFTAdapter) -> list[_Copy]:
        planned = self._plans.get(name)
        if planned is None or planned[0] is not adapter:  # new adapter, or reloaded since: snapshot again
            self._plans[name] = planned = (adapter, self._plan(adapter))
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)
        self._plans.move_to_end(name)
        return planned[1]

    @torch.no_grad()
    def apply(self, name: str, adapter: ESFTAdapter) -> None:
        """Copy ``adapter``'s weights into the model (restoring any adapter applied before)."""
        self.restore()
        for step in self._plan_for(name, adapter):
            _copy(step, step.source)
        self.active = name

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the base weights back (no-op when no adapter is applied)."""
        if self.active is None:
            return
        for step in self._plans[self.active][1]:
            _copy(step, step.snapshot)
        self.active = None

    @torch.no_grad()
    def base_rows(self, key: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of parameter ``key`` as the base model has them, also while an adapter is applied."""
        param = self.model.get_parameter(key)
        rows = param.detach()[ids.to(param.device)].clone()
        if self.active is None:
            return rows
        for step in self._plans[self.active][1]:
            if step.param is param and step.ids is not None:
                for i, expert in enumerate(ids.tolist()):
                    hit = (step.ids == expert).nonzero()
                    if hit.numel():
                        rows[i] = step.snapshot[int(hit[0])]
            elif step.param is param:
                rows = step.snapshot[ids.to(param.device)].clone()
        return rows

    def forget(self, name: str) -> None:
        """Drop the snapshot of ``name`` (e.g. after it was unloaded)."""
        if name != self.active:
            self._plans.pop(name, None)


def _copy(step: _Copy, rows: torch.Tensor) -> None:
    if step.runs is None:
        step.param.copy_(rows)
    elif len(step.runs) == 1:
        start, count, _ = step.runs[0]
        step.param.narrow(0, start, count).copy_(rows)
    else:
        step.param.index_copy_(0, step.ids, rows.to(device=step.param.device, dtype=step.param.dtype))
