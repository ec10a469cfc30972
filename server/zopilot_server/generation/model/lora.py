"""LoRA applied per token inside the packed forward: rows with different adapters, and
rows with none, share one step.

The runner knows which adapter each query token of a step belongs to; ``for_step`` turns
that into a ``StepAdapters``: the tokens that have an adapter (base-only tokens are left
out of all LoRA work), and for each of them the slot of its adapter among the step's
adapters. While the step's forward runs (``applying``: a per-thread context, the
scheduler thread's), a forward hook on every linear module some adapter targets adds
the low-rank delta to the module's output at those tokens.

The delta of all the step's adapters is computed in ONE grouped pass per module, not one
pass per adapter: the adapters' A matrices side by side ``[in, r1 + r2 + ...]`` and their
B matrices stacked ``[r1 + r2 + ..., out]`` (a ``_Stack``, built once per set of adapters
and module, then reused while that set runs); ``h = x @ A`` for the adapter tokens, each
token's ``h`` masked to its own adapter's columns, ``delta = h @ B``. Four operations per
module whatever the number of adapters, where a pass per adapter costs four each: on a
CPU and for small ranks the cost of a step's LoRA is the number of operations, not their
arithmetic (the extra multiply-adds by masked zeros are rank-sized). The base projection
is the model's own module: a float ``nn.Linear`` or a bitsandbytes 8-bit / 4-bit one
(the delta is computed in the compute dtype beside it, as PEFT does).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..loading.adapters import Adapter

_step = threading.local()
# The columns of a stacked A: (adapter slot, rank) per adapter, in order. The modules of
# one kind (every layer's q_proj) share it, so one mask per step serves them all.
Layout = tuple[tuple[int, int], ...]
# Stacked weights of recent adapter sets (a set runs for many steps); bounded, and an
# unloaded adapter's stacks are dropped (``forget``).
_MAX_STACKS = 8
_stacks: collections.OrderedDict[tuple[str, ...], _Stack] = collections.OrderedDict()
_stacks_lock = threading.Lock()


@dataclass
class _Stack:
    """One set of adapters' weights per module, side by side; built on first use."""

    adapters: tuple[Adapter, ...]
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, Layout] | None] = field(
        default_factory=dict
    )

    def weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor, Layout] | None:
        """(A [in, R], B [R, out], which adapter slot owns which of the R columns)."""
        if name not in self.modules:
            parts = [
                (slot, adapter.modules[name])
                for slot, adapter in enumerate(self.adapters)
                if name in adapter.modules
            ]
            if not parts:
                self.modules[name] = None
            else:
                a = torch.cat([w.a for _, w in parts], dim=1) if len(parts) > 1 else parts[0][1].a
                b = torch.cat([w.b for _, w in parts], dim=0) if len(parts) > 1 else parts[0][1].b
                layout = tuple((slot, int(w.a.shape[1])) for slot, w in parts)
                self.modules[name] = (a, b, layout)
        return self.modules[name]


def _stack_of(adapters: tuple[Adapter, ...]) -> _Stack:
    key = tuple(a.cache_key for a in adapters)
    with _stacks_lock:
        stack = _stacks.get(key)
        if stack is None:
            stack = _stacks[key] = _Stack(adapters)
            while len(_stacks) > _MAX_STACKS:
                _stacks.popitem(last=False)
        _stacks.move_to_end(key)
        return stack


def forget(adapter: Adapter) -> None:
    """Drop the stacks holding ``adapter`` (it was unloaded): its memory goes with the
    last request using it, and a set still running rebuilds its stack."""
    with _stacks_lock:
        for key in [k for k in _stacks if adapter.cache_key in k]:
            del _stacks[key]


@dataclass
class StepAdapters:
    """The adapter tokens of one packed step: ``index`` (None: every token has one), the
    slot of each one's adapter in ``stack``, and the masks built for it so far."""

    index: torch.Tensor | None
    slots: torch.Tensor
    stack: _Stack
    single: bool  # one adapter in the step: no mask needed
    masks: dict[tuple[Layout, torch.dtype], torch.Tensor] = field(default_factory=dict)

    def mask(self, layout: Layout, dtype: torch.dtype) -> torch.Tensor:
        """[tokens, R]: 1 where a column belongs to the token's adapter; built once per
        step and column layout."""
        mask = self.masks.get((layout, dtype))
        if mask is None:
            owners = torch.cat(
                [torch.full((rank,), slot, dtype=torch.long) for slot, rank in layout]
            ).to(self.slots.device)
            mask = (self.slots[:, None] == owners[None, :]).to(dtype)
            self.masks[(layout, dtype)] = mask
        return mask


def for_step(adapters: Sequence[Adapter | None], device: torch.device) -> StepAdapters | None:
    """What the hooks apply in a step whose query tokens have ``adapters`` (one entry
    per token, None for the base model); None when no token has one."""
    present: dict[str, int] = {}
    order: list[Adapter] = []
    where: list[int] = []
    slots: list[int] = []
    for i, adapter in enumerate(adapters):
        if adapter is None:
            continue
        slot = present.get(adapter.cache_key)
        if slot is None:
            slot = present[adapter.cache_key] = len(order)
            order.append(adapter)
        where.append(i)
        slots.append(slot)
    if not order:
        return None
    whole = len(where) == len(adapters)
    return StepAdapters(
        index=None if whole else torch.tensor(where, dtype=torch.long, device=device),
        slots=torch.tensor(slots, dtype=torch.long, device=device),
        stack=_stack_of(tuple(order)),
        single=len(order) == 1,
    )


@contextlib.contextmanager
def applying(step: StepAdapters | None) -> Iterator[None]:
    """The hooks apply ``step`` to the forwards run inside (this thread only)."""
    _step.current = step
    try:
        yield
    finally:
        _step.current = None


def _hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    step: StepAdapters | None = getattr(_step, "current", None)
    if step is None:
        return output
    weights = step.stack.weights(module.zopilot_lora_name)  # type: ignore[attr-defined]
    if weights is None:
        return output
    a, b, layout = weights
    if not output.is_contiguous():  # added to in place through a flat view below
        output = output.contiguous()
    x = args[0].reshape(-1, args[0].shape[-1])
    flat_out = output.view(-1, output.shape[-1])
    rows = x if step.index is None else x.index_select(0, step.index)
    h = rows.to(a.dtype) @ a
    if not step.single:
        h = h * step.mask(layout, h.dtype)
    delta = (h @ b).to(flat_out.dtype)
    if step.index is None:
        flat_out += delta
    else:
        flat_out.index_add_(0, step.index, delta)
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
