"""PEFT LoRA adapters: read, checked against the base model, and registered by name.

An adapter directory is what ``peft``'s ``save_pretrained`` writes: ``adapter_config.json``
(read with peft's own ``PeftConfig``) and ``adapter_model.safetensors`` (opened with
``safetensors``; shapes are checked from the header before any tensor is read, so a
hostile file cannot make the server allocate what it claims). Each ``lora_A`` / ``lora_B``
pair must name a linear module of the base model with matching sizes: that is how a
wrong base (another hidden size, other module names) is told, whatever the config's
``base_model_name_or_path`` says. What the forward applies (model/lora.py) is kept as
``x @ a @ b`` per module, with the scaling folded into ``b``, in the model's compute
dtype on its device.

Pickled ``adapter_model.bin`` files are refused: loading one runs code. DoRA,
``modules_to_save``, trained biases and per-module alpha patterns change more than a
low-rank delta on a linear module; they are refused by name rather than served wrong.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...config import ADAPTER_NAME
from ..domain import AdapterExists, AdapterLimit, AdapterNotFound, AdapterRejected

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT prefixes every saved key with the wrapper's path to the base model.
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_MAX_CONFIG_BYTES = 1 << 20
_uids = itertools.count(1)


@dataclass(frozen=True)
class LoraWeights:
    """One module's low-rank delta: ``x @ a @ b`` ([in, r] then [r, out], scaling in b)."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass(eq=False)
class Adapter:
    """A loaded adapter. ``cache_key`` differs for every load (a name unloaded and
    loaded again with other weights never finds the old KV in the prefix cache)."""

    name: str
    path: str
    rank: int
    scaling: float
    target_modules: tuple[str, ...]
    base_model: str
    modules: dict[str, LoraWeights]
    bytes: int
    cache_key: str = ""
    running: int = 0  # rows in the batch using it (the scheduler thread counts)

    def __post_init__(self) -> None:
        self.cache_key = self.cache_key or f"lora:{self.name}#{next(_uids)}"


def check_name(name: str) -> None:
    if not ADAPTER_NAME.fullmatch(name):
        raise AdapterRejected(
            "adapter names are 1..64 characters: letters, digits, '.', '_', '-'", field="name"
        )


def _read_config(directory: Path) -> Any:
    """peft's own LoraConfig of ``directory`` (never a Hub lookup: the file must exist)."""
    from peft import PeftConfig, PeftType

    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterRejected(f"{CONFIG_FILE} is missing in the adapter directory")
    if config_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise AdapterRejected(f"{CONFIG_FILE} is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        config = PeftConfig.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise AdapterRejected(
            f"{CONFIG_FILE} is not a valid PEFT config: {type(exc).__name__}"
        ) from None
    if config.peft_type != PeftType.LORA:
        raise AdapterRejected(f"only LoRA adapters are served, not {config.peft_type}")
    unsupported = {
        "use_dora": bool(getattr(config, "use_dora", False)),
        "modules_to_save": bool(getattr(config, "modules_to_save", None)),
        "bias": getattr(config, "bias", "none") != "none",
        "lora_bias": bool(getattr(config, "lora_bias", False)),
        "alpha_pattern": bool(getattr(config, "alpha_pattern", None)),
        "fan_in_fan_out": bool(getattr(config, "fan_in_fan_out", False)),
    }
    named = [key for key, used in unsupported.items() if used]
    if named:
        raise AdapterRejected(
            f"adapter_config.json sets {', '.join(named)}: only plain LoRA on linear modules "
            "is served",
            fits=False,
        )
    return config


def _linear_sizes(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear module (torch's, or bitsandbytes' 8-bit / 4-bit ones, which
    subclass it); None for anything else."""
    if isinstance(module, torch.nn.Linear):
        return int(module.in_features), int(module.out_features)
    return None


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype activations have (a quantized model's non-quantized weights carry it)."""
    dtype = getattr(model, "dtype", torch.float32)
    return dtype if dtype.is_floating_point else torch.float32


def read_adapter(name: str, path: str, model: torch.nn.Module, *, max_rank: int) -> Adapter:
    """Read and check the adapter in ``path`` against ``model``; AdapterRejected naming
    why when it cannot serve."""
    from safetensors import SafetensorError, safe_open

    check_name(name)
    directory = Path(path)
    if not directory.is_dir():
        raise AdapterRejected("the adapter path is not a directory on the server")
    config = _read_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        bin_hint = (
            " (pickled adapter_model.bin is not loaded)"
            if (directory / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterRejected(f"{WEIGHTS_FILE} is missing in the adapter directory{bin_hint}")
    # Only the decoder's own modules: the LoRA hooks see the packed step's tokens there,
    # while the output head runs on the chosen positions only.
    inner = {id(m) for m in getattr(model, "base_model", model).modules()}
    modules = {name: m for name, m in model.named_modules() if id(m) in inner}
    device = next(model.parameters()).device
    dtype = compute_dtype(model)
    pairs: dict[str, dict[str, Any]] = {}
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            for key in keys:
                match = _KEY.match(key)
                if match is None:
                    raise AdapterRejected(
                        f"{WEIGHTS_FILE} holds a tensor that is not a LoRA A/B weight "
                        f"({_clip(key)})",
                        fits=False,
                    )
                shape = tuple(f.get_slice(key).get_shape())
                pairs.setdefault(match["module"], {})[match["part"]] = (key, shape)
            ranks = _check_shapes(pairs, modules, max_rank)
            loaded = {}
            for module, parts in pairs.items():
                a = f.get_tensor(parts["A"][0])  # [r, in]
                b = f.get_tensor(parts["B"][0])  # [out, r]
                scale = _scaling(config, ranks[module])
                loaded[module] = LoraWeights(
                    a.t().contiguous().to(device=device, dtype=dtype),
                    (b.t().float() * scale).contiguous().to(device=device, dtype=dtype),
                )
    except SafetensorError as exc:
        raise AdapterRejected(f"{WEIGHTS_FILE} is not a valid safetensors file: {exc}") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, AdapterRejected):
            raise
        raise AdapterRejected(f"{WEIGHTS_FILE} cannot be read: {type(exc).__name__}") from None
    if not loaded:
        raise AdapterRejected(f"{WEIGHTS_FILE} holds no LoRA weights")
    rank = max(ranks.values())
    size = sum(
        w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size() for w in loaded.values()
    )
    targets = sorted({module.rsplit(".", 1)[-1] for module in loaded})
    return Adapter(
        name=name,
        path=str(directory),
        rank=rank,
        scaling=_scaling(config, rank),
        target_modules=tuple(targets),
        base_model=str(getattr(config, "base_model_name_or_path", "") or ""),
        modules=loaded,
        bytes=size,
    )


def _check_shapes(
    pairs: dict[str, dict[str, Any]], modules: dict[str, torch.nn.Module], max_rank: int
) -> dict[str, int]:
    """Every module named exists, is linear and has the sizes the A/B pair expects; the
    rank is within ``max_rank``. Returns each module's rank."""
    ranks = {}
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise AdapterRejected(f"{_clip(module)} has lora_A or lora_B only", fits=True)
        (_, a_shape), (_, b_shape) = parts["A"], parts["B"]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise AdapterRejected(f"{_clip(module)}: lora_A / lora_B shapes do not pair up")
        rank = int(a_shape[0])
        if rank > max_rank:
            raise AdapterRejected(
                f"rank {rank} is over this server's --max-lora-rank {max_rank}", field="path"
            )
        base = modules.get(module)
        if base is None:
            raise AdapterRejected(
                f"the base model has no module {_clip(module)} in its decoder: the adapter "
                "was trained for another model, or targets the output head",
                fits=False,
            )
        sizes = _linear_sizes(base)
        if sizes is None:
            raise AdapterRejected(
                f"{_clip(module)} is a {type(base).__name__}, not a linear module", fits=False
            )
        want = (int(a_shape[1]), int(b_shape[0]))
        if want != sizes:
            raise AdapterRejected(
                f"{_clip(module)} is {sizes[0]} -> {sizes[1]} in the base model but "
                f"{want[0]} -> {want[1]} in the adapter: it was trained for another base",
                fits=False,
            )
        ranks[module] = rank
    return ranks


def _scaling(config: Any, rank: int) -> float:
    alpha = float(config.lora_alpha)
    return alpha / math.sqrt(rank) if getattr(config, "use_rslora", False) else alpha / rank


def _clip(text: str, limit: int = 96) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class AdapterRegistry:
    """The adapters requests may name: at most ``max_loras``, rank at most ``max_rank``.
    ``unavailable``: why this server cannot apply adapters at all ("" when it can).
    Thread-safe: loads and unloads come from RPC threads, lookups from validation."""

    model: torch.nn.Module
    max_loras: int
    max_rank: int
    unavailable: str = ""
    on_load: list[Any] = field(default_factory=list)  # called with each new Adapter
    on_unload: list[Any] = field(default_factory=list)  # ... and each one unloaded
    _by_name: dict[str, Adapter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, name: str, path: str) -> Adapter:
        """Read ``path`` and register it as ``name`` (the errors of read_adapter, and
        AdapterExists / AdapterLimit)."""
        check_name(name)
        if self.unavailable:
            raise AdapterRejected(f"adapters cannot be applied: {self.unavailable}", fits=False)
        with self._lock:
            self._check_room(name)
        adapter = read_adapter(name, path, self.model, max_rank=self.max_rank)
        with self._lock:
            self._check_room(name)  # another load may have raced this one's read
            for hook in self.on_load:
                hook(adapter)
            self._by_name[name] = adapter
        log.info(
            "adapter %s loaded: rank %d, %d modules, %.1f MiB",
            name,
            adapter.rank,
            len(adapter.modules),
            adapter.bytes / 2**20,
        )
        return adapter

    def _check_room(self, name: str) -> None:
        if name in self._by_name:
            raise AdapterExists(f"adapter {name!r} is loaded already; unload it first")
        if len(self._by_name) >= self.max_loras:
            raise AdapterLimit(
                f"{self.max_loras} adapters are loaded (--max-loras); unload one first"
            )

    def unload(self, name: str) -> Adapter:
        """Drop ``name``: new requests cannot name it; requests holding it finish with it
        (their reference keeps its weights until they end)."""
        with self._lock:
            adapter = self._by_name.pop(name, None)
        if adapter is None:
            raise AdapterNotFound(name)
        for hook in self.on_unload:
            hook(adapter)
        log.info("adapter %s unloaded (%d requests still running with it)", name, adapter.running)
        return adapter

    def get(self, name: str) -> Adapter:
        with self._lock:
            adapter = self._by_name.get(name)
        if adapter is None:
            if self.unavailable:
                raise AdapterRejected(f"adapters cannot be applied: {self.unavailable}", fits=False)
            raise AdapterNotFound(name)
        return adapter

    def list(self) -> list[Adapter]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda a: a.name)
