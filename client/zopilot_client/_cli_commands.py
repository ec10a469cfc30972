"""The ``zopilot`` commands. Each takes the Client and the parsed flags, returns an exit code.

Text goes to stdout as it arrives; diagnostics, prompts and statistics go to stderr, so
stdout stays clean for pipes. Streams are always read inside ``with``: Ctrl-C (a
KeyboardInterrupt raised while waiting for the next chunk) leaves the block, which
cancels the RPC, and the server stops generating.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._base import DEFAULT_TARGET
from ._client import Client
from ._exceptions import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    RpcError,
    Unauthenticated,
    Unavailable,
    ZopilotError,
)
from ._results import ChatMessage, GenerateResult, HealthStatus, PromptLike

OK, USAGE, UNAVAILABLE = 0, 2, 3


# ------------------------------------------------------------------------------ output


def report(message: str) -> None:
    print(f"zopilot: {message}", file=sys.stderr, flush=True)


def silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def describe_error(error: ZopilotError, args: argparse.Namespace) -> str:
    """One line (a few for several bad fields) that says what went wrong and what to do."""
    if isinstance(error, InvalidArgument) and error.field_violations:
        lines = [f"  {v.field}: {v.description}" for v in error.field_violations]
        return "the server rejected the request:\n" + "\n".join(lines)
    if isinstance(error, Unavailable) and "connect" in error.message.lower():
        # No connection at all (as opposed to a server that answered "still loading").
        target = getattr(args, "target", None) or os.environ.get("ZOPILOT_TARGET") or DEFAULT_TARGET
        return (
            f"cannot connect ({error.message}); is the server running at {target}? "
            "Set --target or ZOPILOT_TARGET"
        )
    if isinstance(error, Unauthenticated):
        return f"{error.message}; pass --api-key or set ZOPILOT_API_KEY"
    if isinstance(error, Overloaded) and error.retry_after is not None:
        return f"server busy: {error.message} (retry in {error.retry_after:.1f} s)"
    if isinstance(error, RpcError):
        return f"{error.code.name.lower().replace('_', ' ')}: {error.message}"
    return str(error)


def _stats_line(result: GenerateResult) -> str:
    usage, timings = result.usage, result.timings
    return (
        f"[{result.finish_reason.value}: {usage.input_tokens} input + "
        f"{usage.generated_tokens} generated tokens, {timings.tokens_per_second:.1f} tok/s, "
        f"{timings.total_ms:.0f} ms, seed {result.seed}, request {result.request_id}]"
    )


def schema_text(value: str) -> str:
    """A --json-schema / --schema argument: JSON text as given, otherwise a file to read."""
    if value.lstrip().startswith("{"):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read the schema file {value}: {exc.strerror}"
        raise argparse.ArgumentTypeError(message) from None


def _read_text(value: str | None) -> str:
    """A command argument, or stdin when it is '-' or missing."""
    if value is None or value == "-":
        if sys.stdin.isatty():
            raise ValueError("give the text as an argument or pipe it on stdin")
        return sys.stdin.read()
    return value


# ---------------------------------------------------------------------------- commands


def stream_to(
    client: Client, prompt: PromptLike, params: dict[str, Any], *, mode: str = "text"
) -> GenerateResult | None:
    """Stream one generation to stdout as it arrives ("text", "jsonl" or "none").

    Returns the whole result, or None when the stream ended without one.
    """
    with client.generate_stream(prompt, **params) as stream:
        for chunk in stream:
            if mode == "jsonl":
                print_json(chunk.to_dict())
            elif mode == "text" and chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    return stream.result


def generate(client: Client, args: argparse.Namespace) -> int:
    text = _read_text(args.prompt)
    prompt: PromptLike = text
    if args.chat or args.system:
        prompt = _with_system(args.system, [ChatMessage("user", text)])
    mode = "none" if args.json else "jsonl" if args.jsonl else "text"
    result = stream_to(client, prompt, args.params, mode=mode)
    if mode == "text":
        sys.stdout.write("\n")
    if result is not None and args.json:
        print_json(result.to_dict())
    if result is not None and args.stats:
        print(_stats_line(result), file=sys.stderr)
    if result is not None and mode == "text" and not result.text.strip():
        _explain_empty(result, chat=bool(args.chat or args.system))
    if result is not None and result.incomplete:
        report(
            f"the output is incomplete: generation ended ({result.finish_reason.value}) "
            "before it completed the constraint; raise --max-new-tokens"
        )
    return OK


def _explain_empty(result: GenerateResult, *, chat: bool) -> None:
    """Say why nothing was printed: instruct models often end a raw prompt at once."""
    why = f"the model produced no text (finish reason {result.finish_reason.value}"
    why += f" after {result.usage.generated_tokens} tokens)"
    if not chat:
        why += "; instruct models answer chat turns: try --chat"
    report(why)


def _with_system(system: str | None, messages: list[ChatMessage]) -> list[ChatMessage]:
    return ([ChatMessage("system", system)] if system else []) + messages


def chat(client: Client, args: argparse.Namespace) -> int:
    """A conversation: every line on stdin is a user turn; the history is sent each time."""
    params = args.params
    history = _with_system(args.system, [])
    interactive = sys.stdin.isatty()
    if interactive:
        report("chat: one message per line; /reset forgets the history, Ctrl-D ends")
    while (line := _next_line(interactive)) is not None:
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history = _with_system(args.system, [])
            continue
        history.append(ChatMessage("user", line))
        try:
            reply = _chat_turn(client, history, params, args)
        except KeyboardInterrupt:
            history.pop()  # the interrupted turn is forgotten; the reply was cancelled
            if not interactive:
                raise
            report("cancelled")
            continue
        history.append(ChatMessage("assistant", reply))
    return OK


def _next_line(interactive: bool) -> str | None:
    if not interactive:
        line = sys.stdin.readline()
        return line or None
    try:
        return input("you> ")
    except EOFError:
        print(file=sys.stderr)
        return None


def _chat_turn(
    client: Client, history: list[ChatMessage], params: dict[str, Any], args: argparse.Namespace
) -> str:
    result = stream_to(client, history, params, mode="none" if args.json else "text")
    if args.json and result is not None:
        print_json(result.to_dict())
    elif not args.json:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return result.text if result is not None else ""


def parse(client: Client, args: argparse.Namespace) -> int:
    source: Any = sys.stdin.buffer.read() if args.file == "-" else Path(args.file)
    if isinstance(source, Path) and not source.is_file():
        raise ValueError(f"no such file: {args.file}")
    options: dict[str, Any] = {"formats": [args.format], "json_fields": args.json_field}
    names = ("filename", "mime_type", "json_schema", "field_extraction", "request_id")
    for name in (*names, "parse_attachments", "csv_neutralize_formulas"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    for name, flag in (
        ("chunk_tokens", "chunks"),
        ("chunk_overlap_tokens", "chunk_overlap"),
        ("chunk_tokenizer", "chunk_tokenizer"),
    ):
        if getattr(args, flag) is not None:
            options[name] = getattr(args, flag)
    document = client.parse_document(source, **options)
    for warning in document.warnings:
        report(f"warning: {warning}")
    output = json.dumps(document.to_dict(), ensure_ascii=False) if args.json else None
    if output is None and args.chunks is not None:
        output = "".join(
            json.dumps(chunk.to_dict(), ensure_ascii=False) + "\n" for chunk in document.chunks
        )
    output = output if output is not None else document.get(args.format) or ""
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
        meta = document.metadata
        report(f"wrote {args.output} ({meta.detected_type}, {meta.processing_ms:.0f} ms)")
    else:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return OK


def info(client: Client, args: argparse.Namespace) -> int:
    model = client.model_info()
    data = model.to_dict()
    if args.json:
        print_json(data)
        return OK
    quantization = data.pop("quantization")
    data["quantization"] = " ".join(f"{k}={v}" for k, v in quantization.items() if v)
    width = max(len(key) for key in data)
    for key, value in data.items():
        shown = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    return OK


def adapters(client: Client, args: argparse.Namespace) -> int:
    """One line per loaded adapter (name, rank, target modules, MiB, path)."""
    model = client.model_info()
    if args.json:
        print_json(
            {
                "adapters": [a.to_dict() for a in model.adapters],
                "max_loras": model.max_loras,
                "max_lora_rank": model.max_lora_rank,
            }
        )
        return OK
    for a in model.adapters:
        modules = ",".join(a.target_modules)
        print(f"{a.name}\trank {a.rank}\t{modules}\t{a.bytes / 2**20:.1f} MiB\t{a.path}")
    print(f"({len(model.adapters)} of at most {model.max_loras}; rank <= {model.max_lora_rank})")
    return OK


def health(client: Client, args: argparse.Namespace) -> int:
    """Print the status; exit 0 only when SERVING. ``--wait`` polls until then."""
    deadline = time.monotonic() + args.wait
    status = _probe(client, args.service, deadline)
    while status is not HealthStatus.SERVING and time.monotonic() < deadline:
        time.sleep(0.25)
        status = _probe(client, args.service, deadline)
    print(status.value)
    if status is HealthStatus.SERVICE_UNKNOWN:
        return USAGE
    return OK if status is HealthStatus.SERVING else UNAVAILABLE


def wait_until_serving(client: Client, timeout: float) -> HealthStatus:
    """``--wait-for-ready``: poll health until SERVING (the model loaded) or ``timeout``."""
    deadline = time.monotonic() + timeout
    status = _probe(client, "", deadline)
    while status is not HealthStatus.SERVING and time.monotonic() < deadline:
        time.sleep(0.25)
        status = _probe(client, "", deadline)
    return status


def _probe(client: Client, service: str, deadline: float) -> HealthStatus:
    """One health check; while waiting (``--wait``) an unreachable server is UNKNOWN."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            return client.health(service)
        return client.health(service, wait_for_ready=True, timeout=left)
    except NotFound:  # grpc.health.v1 answers NOT_FOUND for a service it does not know
        return HealthStatus.SERVICE_UNKNOWN
    except (Unavailable, DeadlineExceeded):
        if left <= 0:
            raise
        return HealthStatus.UNKNOWN  # not up yet: the caller polls until the deadline


def tokenize(client: Client, args: argparse.Namespace) -> int:
    result = client.tokenize(
        _read_text(args.text),
        add_special_tokens=args.add_special_tokens,
        truncate_input_tokens=args.truncate_input_tokens,
    )
    if args.json:
        print_json(result.to_dict())
        return OK
    for token_id, token, (start, end) in zip(
        result.ids, result.tokens, result.offsets, strict=True
    ):
        print(f"{token_id}\t{token!r}\t{start}:{end}")
    suffix = " (truncated)" if result.truncated else ""
    print(f"{len(result)} tokens{suffix}", file=sys.stderr)
    return OK
