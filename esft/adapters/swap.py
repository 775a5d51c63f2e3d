"""Hot-swap: apply an adapter's experts onto a loaded base model in place, and restore them bit-exactly.

Applying copies rows into the fused expert tensors with ``index_copy_`` (no reload); the originals of
exactly those rows are kept so ``restore`` puts the base model back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from esft.adapters.adapter import ESFTAdapter
from esft.errors import AdapterMismatchError
from esft.models.identity import identity_of


@dataclass
class AppliedAdapter:
    """Handle returned by ``apply_adapter``: the rows it replaced, for ``restore``."""

    adapter: ESFTAdapter
    originals: dict[str, torch.Tensor]  # adapter key -> replaced rows (or whole tensor)
    row_ids: dict[str, torch.Tensor]  # adapter key -> expert ids on the model's device


def check_compatible(model: nn.Module, adapter: ESFTAdapter) -> None:
    """Raise ``AdapterMismatchError`` unless ``adapter`` was trained on this model's architecture."""
    mine = identity_of(model.config)
    theirs = adapter.base_model
    if theirs.get("model_type") and theirs["model_type"] != mine["model_type"]:
        raise AdapterMismatchError(f"adapter was trained on a {theirs['model_type']} model, not on this "
                                   f"{mine['model_type']} model", param="adapter")
    if theirs.get("config_hash") and theirs["config_hash"] != mine["config_hash"]:
        raise AdapterMismatchError(f"adapter was trained on a base model with config hash {theirs['config_hash']}, "
                                   f"this model has {mine['config_hash']}: load the base model it was trained on",
                                   param="adapter")
    for key, tensor in adapter.tensors.items():
        try:
            param = model.get_parameter(key)
        except AttributeError:
            raise AdapterMismatchError(
                f"adapter tensor {key!r} has no parameter in this model", param="adapter"
            ) from None
        expected = param.shape[1:] if key in adapter.row_tensors else param.shape
        actual = tensor.shape[1:] if key in adapter.row_tensors else tensor.shape
        if tuple(expected) != tuple(actual):
            raise AdapterMismatchError(f"adapter tensor {key!r} has shape {tuple(tensor.shape)}, which does not "
                                       f"fit the model's {tuple(param.shape)}", param="adapter")


@torch.no_grad()
def apply_adapter(model: nn.Module, adapter: ESFTAdapter, *, check: bool = True) -> AppliedAdapter:
    """Overwrite the adapter's experts in ``model`` (in place) and return a handle for ``restore``.

    >>> handle = apply_adapter(model, ESFTAdapter.from_pretrained("out/adapter"))  # doctest: +SKIP
    >>> restore(model, handle)  # doctest: +SKIP
    """
    if check:
        check_compatible(model, adapter)
    originals, row_ids = {}, {}
    for key, tensor in adapter.tensors.items():
        param = model.get_parameter(key)
        if key in adapter.row_tensors:
            ids = torch.tensor(adapter.expert_config.experts[adapter.row_tensors[key]], device=param.device)
            originals[key] = param[ids]  # advanced indexing copies; far faster than index_select on CPU
            param.index_copy_(0, ids, tensor.to(device=param.device, dtype=param.dtype))
            row_ids[key] = ids
        else:
            originals[key] = param.detach().clone()
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
    return AppliedAdapter(adapter, originals, row_ids)


@torch.no_grad()
def restore(model: nn.Module, applied: AppliedAdapter) -> None:
    """Put back exactly the tensors ``apply_adapter`` replaced."""
    for key, original in applied.originals.items():
        param = model.get_parameter(key)
        if key in applied.row_ids:
            param.index_copy_(0, applied.row_ids[key], original)
        else:
            param.copy_(original)


@contextmanager
def applied(model: nn.Module, adapter: ESFTAdapter) -> Iterator[nn.Module]:
    """Context manager: the model with ``adapter`` applied inside the block, restored after it."""
    handle = apply_adapter(model, adapter)
    try:
        yield model
    finally:
        restore(model, handle)
