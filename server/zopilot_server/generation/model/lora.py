"""LoRA applied per token group inside the packed forward: rows with different adapters,
and rows with none, share one step.

The runner knows which adapter each query token of a step belongs to; ``token_groups``
turns that into one group per adapter present (the indices of its tokens in the packed
sequence). While the step's forward runs (``applying``: a per-thread context, the
scheduler thread's), a forward hook on every linear module some adapter targets adds
``x[idx] @ a @ b`` to the module's output at those indices: one gathered pass per
adapter present, nothing for the base-only tokens, no hook work at all in a step without
adapters. The base projection is the model's own module, whatever it is: a float
``nn.Linear`` or a bitsandbytes 8-bit / 4-bit one (the delta is computed in the compute
dtype beside it, as PEFT does).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..loading.adapters import Adapter

_step = threading.local()


@dataclass(frozen=True)
class TokenGroup:
    """The tokens of one adapter in a packed step; ``index`` None: all of them."""

    adapter: Adapter
    index: torch.Tensor | None


def token_groups(adapters: Sequence[Adapter | None], device: torch.device) -> list[TokenGroup]:
    """One group per adapter among ``adapters`` (one entry per query token)."""
    positions: dict[int, list[int]] = {}
    by_id: dict[int, Adapter] = {}
    for i, adapter in enumerate(adapters):
        if adapter is not None:
            positions.setdefault(id(adapter), []).append(i)
            by_id[id(adapter)] = adapter
    groups = []
    for key, where in positions.items():
        whole = len(where) == len(adapters)
        index = None if whole else torch.tensor(where, dtype=torch.long, device=device)
        groups.append(TokenGroup(by_id[key], index))
    return groups


@contextlib.contextmanager
def applying(groups: list[TokenGroup]) -> Iterator[None]:
    """The hooks apply ``groups`` to the forwards run inside (this thread only)."""
    _step.groups = groups
    try:
        yield
    finally:
        _step.groups = None


def _hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    groups: list[TokenGroup] | None = getattr(_step, "groups", None)
    if not groups:
        return output
    name = module.zopilot_lora_name  # type: ignore[attr-defined]
    x = args[0]
    if not output.is_contiguous():  # added to in place through a flat view below
        output = output.contiguous()
    flat_x = x.reshape(-1, x.shape[-1])
    flat_out = output.view(-1, output.shape[-1])
    for group in groups:
        weights = group.adapter.modules.get(name)
        if weights is None:
            continue
        rows = flat_x if group.index is None else flat_x.index_select(0, group.index)
        delta = (rows.to(weights.a.dtype) @ weights.a @ weights.b).to(flat_out.dtype)
        if group.index is None:
            flat_out += delta
        else:
            flat_out.index_add_(0, group.index, delta)
    return output


def install(model: torch.nn.Module, adapter: Adapter) -> int:
    """Hook the modules ``adapter`` targets (once per module); returns how many new."""
    modules = dict(model.named_modules())
    added = 0
    for name in adapter.modules:
        module = modules[name]
        if getattr(module, "zopilot_lora_name", None) is None:
            module.zopilot_lora_name = name  # type: ignore[attr-defined]
            module.register_forward_hook(_hook)
            added += 1
    return added
