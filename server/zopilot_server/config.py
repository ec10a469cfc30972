"""The one server configuration object, built from flags with ``ZOPILOT_*`` env fallbacks.

Every setting is declared once, as a dataclass field whose metadata carries its help
text. The argument parser is derived from those fields, so a new setting cannot forget
its flag, its environment variable or its line in ``--help``. Precedence: flag, then
environment variable, then the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "ZOPILOT_"
# What a LoRA adapter may be called (--lora NAME=PATH, LoadAdapter).
ADAPTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
PROTOCOLS = ("zopilot", "kserve", "tgis", "vllm")
MIB = 1024 * 1024
# Streams a connection may hold beyond what admission holds: health Watch streams,
# Tokenize / GetModelInfo calls, and refused calls still ending.
STREAM_HEADROOM = 64


def _opt(help_text: str, default: Any, *, choices: Sequence[str] | None = None) -> Any:
    """Declare a setting: its default and the help line shown by ``--help``."""
    return field(default=default, metadata={"help": help_text, "choices": choices})


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "zopilot")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process can be told. Passed down whole, never unpacked."""

    # --- network ---
    host: str = _opt("interface to listen on", "127.0.0.1")
    port: int = _opt("port to listen on (0 picks a free one)", 50051)
    grace_period_s: float = _opt("seconds in-flight RPCs get to finish on SIGTERM/SIGINT", 10.0)
    api_key: str = _opt(
        "require 'authorization: Bearer <key>' metadata on every RPC (health excepted); "
        "empty disables auth",
        "",
    )
    log_level: str = _opt("log level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    # --- operations: metrics, TLS, key file, tracing (docs/operations.md) ---
    metrics_port: int = _opt("Prometheus /metrics HTTP port on --host (0 = off)", 0)
    tls_cert: str = _opt("PEM server certificate chain; with --tls-key serves TLS", "")
    tls_key: str = _opt("PEM private key of --tls-cert", "")
    tls_client_ca: str = _opt("PEM CA bundle: require client certificates it signed (mTLS)", "")
    api_key_file: str = _opt("read the API key from this file (keeps it out of ps)", "")
    max_health_watches: int = _opt(
        "health Watch streams without the API key (all of them without --api-key) open at "
        "a time, about 21 KiB each; beyond it RESOURCE_EXHAUSTED; 0 = no limit",
        256,
    )
    otlp_endpoint: str = _opt("OTLP/gRPC collector for trace spans (needs opentelemetry)", "")

    # --- model ---
    model: str = _opt(
        "local HF model directory or .gguf file; empty = the embedded SmolLM2-135M-Instruct",
        "",
    )
    cache_dir: str = _opt(
        "where the embedded model is converted once and reused", _default_cache_dir()
    )
    device: str = _opt("where the model runs", "auto", choices=("auto", "cpu", "cuda"))
    dtype: str = _opt(
        "weights dtype; auto = bfloat16 on CUDA, float32 on CPU",
        "auto",
        choices=("auto", "float32", "float16", "bfloat16"),
    )
    quantize: str = _opt(
        "bitsandbytes quantization (needs CUDA with the image's bitsandbytes)",
        "none",
        choices=("none", "8bit", "4bit"),
    )
    bnb_4bit_quant_type: str = _opt("4-bit quantization type", "nf4", choices=("nf4", "fp4"))
    bnb_4bit_compute_dtype: str = _opt(
        "4-bit compute dtype; auto = the model dtype",
        "auto",
        choices=("auto", "float32", "float16", "bfloat16"),
    )
    bnb_double_quant: bool = _opt("4-bit: quantize the quantization constants too", False)
    bnb_int8_threshold: float = _opt("8-bit: LLM.int8() outlier threshold", 6.0)

    # --- other protocols on the same port (docs/api/kserve.md, docs/api/tgis.md) ---
    protocols: str = _opt(
        "comma-separated APIs to serve besides health and reflection: zopilot (zopilot.v1), "
        "kserve (KServe v2 / Triton inference.GRPCInferenceService), tgis "
        "(fmaas.GenerationService), vllm (vllm.grpc.engine.VllmEngine: the worker "
        "contract of gateways such as smg)",
        "zopilot,kserve,tgis,vllm",
    )
    served_model_name: str = _opt(
        "the model name KServe / Triton and TGIS clients send (also in GetModelInfo); "
        "empty = the model directory's name",
        "",
    )

    # --- LoRA adapters (docs/adapters.md) ---
    lora: tuple[str, ...] = _opt(
        "serve a PEFT LoRA adapter directory (adapter_config.json + "
        "adapter_model.safetensors) as NAME=PATH, which GenerateRequest.adapter selects; "
        "repeat the flag for more (in the env variable: comma-separated)",
        (),
    )
    max_loras: int = _opt("LoRA adapters resident at once (--lora and LoadAdapter)", 8)
    max_lora_rank: int = _opt("largest LoRA rank an adapter may have", 64)
    adapter_admin: bool = _opt(
        "serve LoadAdapter / UnloadAdapter (behind --api-key when one is set); off = "
        "PERMISSION_DENIED, the adapters are the --lora ones",
        False,
    )

    # --- generation limits ---
    default_max_new_tokens: int = _opt("max_new_tokens when a request leaves it unset", 256)
    max_new_tokens_limit: int = _opt("largest max_new_tokens a request may ask for", 4096)
    max_stop_sequences: int = _opt("most stop sequences per request", 8)
    max_stop_sequence_chars: int = _opt("longest stop sequence, in characters", 256)
    max_top_n_tokens: int = _opt("most alternatives per token in token details", 10)
    max_constraint_bytes: int = _opt(
        "largest structured-output constraint (json_schema, regex, choice options), in bytes",
        65536,
    )
    max_queue: int = _opt(
        "requests that may wait to join the running batch; beyond it RESOURCE_EXHAUSTED", 32
    )
    # Continuous batching (docs/operations.md, "Sizing a GPU", says how to size these).
    max_batch_size: int = _opt(
        "requests decoded together in one step (continuous batching); 1 = one at a time", 16
    )
    max_batch_tokens: int = _opt(
        "optional work cap: the sum of prompt + max_new_tokens over the running batch; "
        "requests beyond it wait (a single larger request runs alone); 0 = no cap beyond "
        "the KV arena's slots",
        0,
    )
    max_prefill_tokens: int = _opt(
        "most prompt tokens one step carries beside decoding rows (within it "
        "--max-step-stall sizes them); with nobody decoding, prompts go in whole",
        512,
    )
    max_step_stall: float = _opt(
        "how much slower than a pure decode step a step may be that also carries prompt "
        "tokens (packed into the same forward): bounds what a joining prompt costs the "
        "running streams' inter-token time; higher = faster first tokens, lower = "
        "steadier streams",
        2.0,
    )
    # Speculative decoding (docs/concepts/speculative.md): drafts from the request's own text.
    speculative_tokens: int = _opt(
        "most draft tokens a decoding request verifies per step (n-gram speculation: "
        "tokens that followed the text's latest n tokens earlier in the prompt or "
        "output, checked in the same forward; greedy text is unchanged, and a seed gives "
        "the same text); drafts shrink per request as they get rejected and as the batch "
        "grows; 0 = off",
        8,
    )
    speculative_ngram_max: int = _opt(
        "longest n-gram the draft proposer matches (the longest match wins)", 4
    )
    speculative_ngram_min: int = _opt(
        "shortest n-gram the draft proposer matches: lower drafts more often and is "
        "right less often",
        2,
    )
    # The KV arena (docs/operations.md, "Sizing a GPU": how to size it).
    kv_cache_memory_fraction: float = _opt(
        "CUDA: share of the GPU memory free after loading the model that the KV arena "
        "takes (like vLLM's gpu_memory_utilization)",
        0.9,
    )
    kv_cache_memory_mib: int = _opt(
        "KV arena size in MiB; 0 = on CUDA --kv-cache-memory-fraction, on CPU a quarter "
        "of RAM up to 8192 (CPU pages are only used as rows fill them)",
        0,
    )
    kv_slot_tokens: int = _opt(
        "tokens one KV slot holds (prompt + max_new_tokens of one request); 0 = the "
        "largest that keeps --max-batch-size slots within the arena, up to the model's "
        "context",
        0,
    )
    prefix_cache: str = _opt(
        "reuse the KV of prompt prefixes already in the arena (a shared system prompt, "
        "a conversation's history, a document asked about again) instead of recomputing them",
        "on",
        choices=("on", "off"),
    )
    stream_interval_ms: int = _opt(
        "GenerateStream: after the first chunk, send at most one chunk per this many ms, "
        "merging the tokens in between (0 = a chunk per token)",
        0,
    )
    special_tokens_as_text: bool = _opt(
        "tokenize special-token text in prompts and chat contents (a user typing a chat "
        "control token) as plain text for every request, so user text cannot forge chat "
        "turns; off = it is the control token (transformers, TGI and vLLM do the same), "
        "unless a request sets special_tokens_as_text",
        False,
    )
    deadline_margin_ms: int = _opt(
        "stop generating this long before a call's deadline, to deliver the text", 150
    )

    # --- documents ---
    doc_max_bytes: int = _opt("largest document DocumentParse accepts", 32 * MIB)
    doc_workers: int = _opt("parser worker processes (documents parsed at the same time)", 2)
    doc_timeout_s: float = _opt("wall-clock limit for parsing one document", 60.0)
    doc_model_dir: str = _opt(
        "docstrange OCR model cache (scanned PDFs, images); empty = ~/.cache/docstrange/models",
        "",
    )
    doc_max_queue: int = _opt(
        "documents that may wait for a free parser worker; beyond it RESOURCE_EXHAUSTED", 16
    )
    doc_prestart: bool = _opt(
        "start the parser workers at startup (otherwise on the first DocumentParse)", True
    )
    # bundled OCR (documents/readers/ocr.py), used when docstrange's OCR models are not installed
    doc_ocr_max_pages: int = _opt("pages one document may need OCR on; more is refused", 50)
    doc_ocr_max_pixels: int = _opt(
        "pixels per image (or rendered page) for OCR; larger images are refused", 40_000_000
    )
    doc_fault_injection: bool = _opt(
        "TESTING ONLY: filenames starting with 'zopilot-fault-' make the parser hang, crash "
        "or probe the network; never enable in production",
        False,
    )

    # --- hardening limits (what one client or one document may cost) ---
    max_input_chars: int = _opt(
        "longest prompt / messages / Tokenize text, in characters, checked before "
        "tokenizing; 0 = 16 x the model's context length",
        0,
    )
    max_connection_age_s: float = _opt(
        "close a connection this long after it opened (GOAWAY; clients reconnect), so "
        "stuck or forgotten calls cannot live forever; 0 = never",
        1800.0,
    )
    max_connection_age_grace_s: float = _opt(
        "after --max-connection-age-s, calls still running get this long to finish", 600.0
    )
    max_connection_idle_s: float = _opt(
        "close a connection that has had no call for this long; 0 = never", 900.0
    )
    max_streams_per_connection: int = _opt(
        "concurrent calls one connection may have (HTTP/2 max concurrent streams); beyond "
        "it the transport refuses streams (UNAVAILABLE 'Stream removed'), so it must stay "
        "well above what admission holds (batch + queue + parser workers + parser queue), "
        "which answers RESOURCE_EXHAUSTED + RetryInfo instead; 0 = 1024, or 4 x that sum if "
        "larger",
        0,
    )
    send_timeout_s: float = _opt(
        "GenerateStream: cancel a stream whose client has taken no data for this long "
        "(stopped reading: its HTTP/2 window stays 0); its row leaves the batch; 0 = never",
        30.0,
    )
    doc_worker_memory_mib: int = _opt(
        "memory one parse may take: each parser worker's address space is capped (RLIMIT_AS) "
        "at its size after start-up plus this; a document that needs more fails with "
        "RESOURCE_EXHAUSTED and the worker is replaced; 0 = no cap",
        4096,
    )
    doc_max_cells: int = _opt(
        "cells an XLSX may span, all sheets together (each sheet's used range, rows x "
        "columns); a larger workbook is refused with INVALID_ARGUMENT before it is read; "
        "0 = no limit",
        2_000_000,
    )

    def validated(self) -> ServerConfig:
        """Return self after checking cross-field rules; raise ValueError naming the flag."""
        checks = [
            (0 <= self.port <= 65535, "--port must be 0..65535"),
            (self.grace_period_s >= 0, "--grace-period-s must be >= 0"),
            (0 <= self.metrics_port <= 65535, "--metrics-port must be 0..65535"),
            (bool(self.tls_cert) == bool(self.tls_key), "--tls-cert and --tls-key go together"),
            (not self.tls_client_ca or bool(self.tls_cert), "--tls-client-ca needs --tls-cert"),
            (not (self.api_key and self.api_key_file), "give --api-key or --api-key-file"),
            (self.max_health_watches >= 0, "--max-health-watches must be >= 0"),
            (self.default_max_new_tokens >= 1, "--default-max-new-tokens must be >= 1"),
            (
                self.default_max_new_tokens <= self.max_new_tokens_limit,
                "--default-max-new-tokens must not exceed --max-new-tokens-limit",
            ),
            (self.max_stop_sequences >= 0, "--max-stop-sequences must be >= 0"),
            (self.max_constraint_bytes >= 1, "--max-constraint-bytes must be >= 1"),
            (self.max_queue >= 0, "--max-queue must be >= 0"),
            (self.max_batch_size >= 1, "--max-batch-size must be >= 1"),
            (self.max_batch_tokens >= 0, "--max-batch-tokens must be >= 0"),
            (
                0 < self.kv_cache_memory_fraction <= 1,
                "--kv-cache-memory-fraction must be in (0, 1]",
            ),
            (self.kv_cache_memory_mib >= 0, "--kv-cache-memory-mib must be >= 0"),
            (self.kv_slot_tokens >= 0, "--kv-slot-tokens must be >= 0"),
            (self.max_prefill_tokens >= 1, "--max-prefill-tokens must be >= 1"),
            (1.0 <= self.max_step_stall <= 100.0, "--max-step-stall must be in [1, 100]"),
            (0 <= self.speculative_tokens <= 64, "--speculative-tokens must be in [0, 64]"),
            (
                1 <= self.speculative_ngram_min <= self.speculative_ngram_max <= 16,
                "--speculative-ngram-min and --speculative-ngram-max must satisfy "
                "1 <= min <= max <= 16",
            ),
            (self.bnb_int8_threshold >= 0, "--bnb-int8-threshold must be >= 0"),
            (self.max_loras >= 1, "--max-loras must be >= 1"),
            (self.max_lora_rank >= 1, "--max-lora-rank must be >= 1"),
            (len(self.lora) <= self.max_loras, "--lora: more adapters than --max-loras"),
            (self.deadline_margin_ms >= 0, "--deadline-margin-ms must be >= 0"),
            (self.stream_interval_ms >= 0, "--stream-interval-ms must be >= 0"),
            (self.doc_max_bytes >= 1, "--doc-max-bytes must be >= 1"),
            (self.doc_workers >= 1, "--doc-workers must be >= 1"),
            (self.doc_timeout_s > 0, "--doc-timeout-s must be > 0"),
            (self.doc_max_queue >= 0, "--doc-max-queue must be >= 0"),
            (self.doc_ocr_max_pages >= 1, "--doc-ocr-max-pages must be >= 1"),
            (self.doc_ocr_max_pixels >= 1, "--doc-ocr-max-pixels must be >= 1"),
            (self.max_input_chars >= 0, "--max-input-chars must be >= 0"),
            (self.max_connection_age_s >= 0, "--max-connection-age-s must be >= 0"),
            (self.max_connection_age_grace_s >= 0, "--max-connection-age-grace-s must be >= 0"),
            (self.max_connection_idle_s >= 0, "--max-connection-idle-s must be >= 0"),
            (self.max_streams_per_connection >= 0, "--max-streams-per-connection must be >= 0"),
            (
                self.max_streams_per_connection == 0
                or self.max_streams_per_connection >= self.admitted_calls + STREAM_HEADROOM,
                f"--max-streams-per-connection must be 0 (auto) or at least {STREAM_HEADROOM} "
                "above --max-batch-size + --max-queue + --doc-workers + --doc-max-queue "
                f"({self.admitted_calls}): below that a burst on one connection is refused by "
                "the transport (UNAVAILABLE) instead of answered by admission",
            ),
            (self.send_timeout_s >= 0, "--send-timeout-s must be >= 0"),
            (self.doc_worker_memory_mib >= 0, "--doc-worker-memory-mib must be >= 0"),
            (self.doc_max_cells >= 0, "--doc-max-cells must be >= 0"),
            (
                bool(self.protocol_set) and self.protocol_set <= set(PROTOCOLS),
                f"--protocols: a comma-separated subset of {','.join(PROTOCOLS)}",
            ),
            (
                self.served_model_name == self.served_model_name.strip()
                and self.served_model_name.isprintable()
                and len(self.served_model_name) <= 256,
                "--served-model-name: printable, at most 256 characters, no surrounding spaces",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.lora_adapters  # noqa: B018 - raises ValueError naming a bad --lora
        return self

    @property
    def lora_adapters(self) -> list[tuple[str, str]]:
        """The --lora values as (name, path); ValueError naming a malformed one."""
        pairs = []
        for spec in self.lora:
            name, sep, path = spec.partition("=")
            if not sep or not path or not ADAPTER_NAME.fullmatch(name):
                raise ValueError(
                    f"--lora {spec!r}: expected NAME=PATH, NAME 1..64 letters, digits, '.', "
                    "'_' or '-'"
                )
            pairs.append((name, path))
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError("--lora: the same adapter name is given twice")
        return pairs

    @property
    def protocol_set(self) -> frozenset[str]:
        """The --protocols names, parsed."""
        return frozenset(p.strip() for p in self.protocols.split(",") if p.strip())

    @property
    def admitted_calls(self) -> int:
        """The most generation and parse calls admission holds at once (running + queued);
        any call beyond is answered at once with RESOURCE_EXHAUSTED."""
        return self.max_batch_size + self.max_queue + self.doc_workers + self.doc_max_queue

    @property
    def streams_per_connection(self) -> int:
        """The HTTP/2 stream limit in force: explicit, or comfortably above admission."""
        if self.max_streams_per_connection:
            return self.max_streams_per_connection
        return max(1024, 4 * self.admitted_calls)

    @property
    def max_receive_message_bytes(self) -> int:
        """gRPC receive limit: a maximal document plus room for the other request fields."""
        return self.doc_max_bytes + MIB


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        return _parse_bool(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """An argument parser whose defaults come from ``env`` (``ZOPILOT_*``) or the dataclass."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="zopilot-server",
        description=(
            "gRPC inference server: streams tokens from a Hugging Face causal LM and parses "
            "documents with docstrange. Every flag can also be set with the environment "
            "variable shown next to it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(ServerConfig):
        env_name = _env_name(f.name)
        default = f.default
        if env_name in env:
            try:
                default = _convert(f, env[env_name])
            except ValueError as exc:
                parser.error(f"{env_name}: {exc}")
        help_text = f"{f.metadata['help']} [env {env_name}]"
        choices = f.metadata.get("choices")
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind.startswith("tuple"):  # repeatable; the env variable is comma-separated
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action="append",
                default=None,
                help=help_text,
                metavar="VALUE",
            )
            parser.set_defaults(**{f"_{f.name}_default": default})
        elif kind == "bool":
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                type=lambda raw, f=f: _convert(f, raw),
                default=default,
                choices=choices,
                help=help_text,
                metavar=f.name.upper() if choices is None else None,
            )
    return parser


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Parse flags (falling back to env, then defaults) into a validated ServerConfig."""
    parser = build_parser(env)
    values = vars(parser.parse_args(argv))
    for name in [key for key in values if key.startswith("_") and key.endswith("_default")]:
        default = values.pop(name)
        field_name = name[1 : -len("_default")]
        given = values[field_name]
        values[field_name] = tuple(given) if given is not None else default
    try:
        return ServerConfig(**values).validated()
    except ValueError as exc:
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits
