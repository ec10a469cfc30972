"""The ``zopilot`` command line: generate, chat, parse, info, health, tokenize.

Exit codes (also in ``zopilot --help``), so scripts can tell failures apart::

    0    success (health: the server is SERVING)
    1    the server failed (INTERNAL, UNKNOWN, ...), or another error
    2    usage error: bad flags, unreadable input, or the server rejected the
         request (INVALID_ARGUMENT, NOT_FOUND)
    3    server unreachable, still loading or draining (UNAVAILABLE); health: not serving
    4    missing or wrong API key (UNAUTHENTICATED, PERMISSION_DENIED)
    5    server busy (RESOURCE_EXHAUSTED) after the client's retries
    6    timed out (DEADLINE_EXCEEDED)
    7    the server cannot do this (FAILED_PRECONDITION, UNIMPLEMENTED)
    130  interrupted with Ctrl-C (the generation is cancelled on the server)

User errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _cli_commands as commands
from ._base import DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from ._channel import TLS, RetryPolicy
from ._client import Client
from ._exceptions import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    ZopilotError,
)
from ._results import HealthStatus
from ._version import __version__


class ExitCode(enum.IntEnum):
    """The process exit codes; see the module docstring."""

    OK = 0
    ERROR = 1
    USAGE = 2
    UNAVAILABLE = 3
    AUTH = 4
    OVERLOADED = 5
    TIMEOUT = 6
    UNSUPPORTED = 7
    INTERRUPTED = 130


_EXIT_BY_ERROR: tuple[tuple[type[ZopilotError], ExitCode], ...] = (
    (InvalidArgument, ExitCode.USAGE),
    (NotFound, ExitCode.USAGE),
    (Unavailable, ExitCode.UNAVAILABLE),
    (Unauthenticated, ExitCode.AUTH),
    (PermissionDenied, ExitCode.AUTH),
    (Overloaded, ExitCode.OVERLOADED),
    (DeadlineExceeded, ExitCode.TIMEOUT),
    (FailedPrecondition, ExitCode.UNSUPPORTED),
    (Unimplemented, ExitCode.UNSUPPORTED),
)


def exit_code(error: ZopilotError) -> ExitCode:
    return next((code for kind, code in _EXIT_BY_ERROR if isinstance(error, kind)), ExitCode.ERROR)


# ------------------------------------------------------------------------------ parser

# Generation parameters: (request field, type, help). Each becomes --field-name.
GENERATION_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_new_tokens", int, "tokens to generate at most (default: the server's)"),
    ("min_new_tokens", int, "tokens to generate before the end-of-sequence token may stop"),
    ("temperature", float, "sampling temperature; 0 or unset = greedy decoding"),
    ("top_p", float, "nucleus sampling probability mass, (0, 1]"),
    ("top_k", int, "sample among the K most likely tokens only"),
    ("repetition_penalty", float, "1.0 = off; above 1 discourages repetition"),
    ("seed", int, "sampling seed, for reproducible output"),
    ("truncate_input_tokens", int, "keep only the last N prompt tokens"),
    ("time_limit_ms", int, "stop generating after this many milliseconds (text is kept)"),
    ("top_n_tokens", int, "with token details: also return N alternatives per token"),
    ("request_id", str, "an id for the server's logs (default: the server makes one)"),
    ("adapter", str, "generate with this LoRA adapter (`zopilot adapters` lists them)"),
)
GENERATION_SWITCHES: tuple[tuple[str, str], ...] = (
    ("include_stop_sequence", "keep the matched stop sequence at the end of the text"),
    ("ignore_eos", "keep generating after the end-of-sequence token"),
    ("skip_prefix_cache", "neither reuse nor leave cached prompt KV on the server"),
    ("skip_speculation", "no speculative drafts for this request (same output)"),
    ("return_token_details", "return id, text and logprob of every token (with --json)"),
    ("special_tokens_as_text", "tokenize special-token text in the input as plain text"),
)

EPILOG = """\
environment: ZOPILOT_TARGET (--target), ZOPILOT_API_KEY (--api-key)
exit codes: 0 ok, 1 server error, 2 usage / invalid request, 3 server unavailable or
not serving, 4 authentication, 5 server busy, 6 timeout, 7 unsupported by the server,
130 interrupted (Ctrl-C cancels the generation on the server)"""


WAIT_FOR_READY_DEFAULT_S = 120.0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    """Connection flags; SUPPRESS lets them go before or after the command name."""
    group = parser.add_argument_group("connection")
    keep = argparse.SUPPRESS
    group.add_argument(
        "--target",
        default=keep,
        help=f"server address HOST:PORT or gRPC target (env ZOPILOT_TARGET; {DEFAULT_TARGET})",
    )
    group.add_argument("--api-key", default=keep, help="API key (env ZOPILOT_API_KEY)")
    group.add_argument(
        "--timeout",
        type=float,
        default=keep,
        help=f"seconds per call, retries included (default {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument("--tls", action="store_true", default=keep, help="use TLS")
    group.add_argument("--tls-ca", default=keep, metavar="PEM", help="CA bundle (implies --tls)")
    group.add_argument(
        "--tls-cert",
        default=keep,
        metavar="PEM",
        help="client certificate for mTLS (implies --tls)",
    )
    group.add_argument("--tls-key", default=keep, metavar="PEM", help="key of --tls-cert")
    group.add_argument(
        "--wait-for-ready",
        action="store_true",
        default=keep,
        help="wait for the server to come up and report SERVING (the model loaded), "
        f"at most --timeout seconds ({WAIT_FOR_READY_DEFAULT_S:.0f} without one)",
    )
    group.add_argument(
        "--no-retry", action="store_true", default=keep, help="do not retry busy/unavailable"
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation parameters")
    for name, kind, help_text in GENERATION_FLAGS:
        metavar = {int: "N", float: "X"}.get(kind, "TEXT")
        group.add_argument(_flag(name), dest=name, type=kind, metavar=metavar, help=help_text)
    group.add_argument(
        "--stop",
        dest="stop_sequences",
        action="append",
        metavar="TEXT",
        help="stop when TEXT is generated (repeatable)",
    )
    for name, help_text in GENERATION_SWITCHES:
        group.add_argument(_flag(name), dest=name, action="store_true", help=help_text)
    group.add_argument("--system", help="a system message (implies the chat template)")
    constraint = parser.add_argument_group(
        "structured output (at most one)"
    ).add_mutually_exclusive_group()
    constraint.add_argument(
        "--json-schema",
        metavar="FILE",
        type=commands.schema_text,
        help="the output is JSON valid under this JSON Schema (a file, or the JSON itself)",
    )
    constraint.add_argument("--regex", metavar="RE", help="the whole output matches RE")
    constraint.add_argument(
        "--choice",
        action="append",
        metavar="TEXT",
        help="the output is exactly one of the TEXTs (repeat: --choice yes --choice no)",
    )
    constraint.add_argument(
        "--json-object", action="store_true", help="the output is one JSON object"
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerateParams the user set (unset flags leave the server's defaults)."""
    params = {n: getattr(args, n) for n, _, _ in GENERATION_FLAGS if getattr(args, n) is not None}
    params.update({n: True for n, _ in GENERATION_SWITCHES if getattr(args, n)})
    if args.stop_sequences:
        params["stop_sequences"] = args.stop_sequences
    for name in ("json_schema", "regex", "choice"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.json_object:
        params["json_object"] = True
    return params


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common)
    parser = argparse.ArgumentParser(
        prog="zopilot",
        description="Talk to a zopilotgpu server: generate text, chat, parse documents.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"zopilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(run=run)
        return p

    gen = command("generate", commands.generate, "stream a completion to stdout")
    gen.add_argument("prompt", nargs="?", help="the prompt; '-' or none reads stdin")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message")
    _output_modes(gen, jsonl=True)
    gen.add_argument("--stats", action="store_true", help="print usage and timings to stderr")
    _generation_options(gen)

    chat = command("chat", commands.chat, "interactive chat (one user message per line)")
    _output_modes(chat, jsonl=False)
    _generation_options(chat)

    parse = command("parse", commands.parse, "parse a document to markdown (or another format)")
    parse.add_argument("file", help="the document; '-' reads stdin (then give --filename)")
    parse.add_argument("-o", "--output", help="write to this file instead of stdout")
    parse.add_argument(
        "--format",
        default="markdown",
        choices=("markdown", "html", "text", "json", "csv"),
        help="output format (default: markdown)",
    )
    parse.add_argument("--filename", help="file name sent to the server (selects the parser)")
    parse.add_argument("--mime-type", help="MIME type, when the file name has no extension")
    parse.add_argument("--json-field", action="append", default=[], help="JSON: extract FIELD")
    parse.add_argument(
        "--schema",
        "--json-schema",
        dest="json_schema",
        metavar="FILE",
        type=commands.schema_text,
        help="JSON output: fill this JSON Schema from the document (a file, or the JSON itself)",
    )
    parse.add_argument(
        "--field-extraction",
        choices=("model", "labels"),
        help="how --schema / --json-field are filled (default: the model when it can)",
    )
    parse.add_argument(
        "--csv-neutralize-formulas",
        action="store_true",
        help="csv: prefix cells a spreadsheet would run as formulas (=, +, -, @) with '",
    )
    parse.add_argument("--request-id", help="an id for the server's logs")
    parse.add_argument(
        "--attachments",
        dest="parse_attachments",
        action="store_true",
        help="e-mail: also parse the attachments (default: list them)",
    )
    chunks = parse.add_argument_group("chunks for retrieval")
    chunks.add_argument(
        "--chunks",
        type=int,
        metavar="N",
        help="print the markdown's chunks of at most N tokens, one JSON object a line",
    )
    chunks.add_argument(
        "--chunk-overlap", type=int, metavar="M", help="repeat M tokens of the previous chunk"
    )
    chunks.add_argument(
        "--chunk-tokenizer",
        metavar="MODEL",
        help="count with this installed model's tokenizer (default: the served model's)",
    )
    _output_modes(parse, jsonl=False, what="the whole response with metadata")

    info = command("info", commands.info, "describe the served model and limits")
    _output_modes(info, jsonl=False)

    adapters = command("adapters", commands.adapters, "list the LoRA adapters requests may name")
    _output_modes(adapters, jsonl=False)

    health = command("health", commands.health, "check the server's health (exit 0 if serving)")
    health.add_argument("--service", default="", help="a service name (default: the server)")
    health.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="wait up to SECONDS for serving"
    )

    tokenize = command("tokenize", commands.tokenize, "tokenize text with the model's tokenizer")
    tokenize.add_argument("text", help="the text; '-' reads stdin")
    tokenize.add_argument("--add-special-tokens", action="store_true")
    tokenize.add_argument("--truncate-input-tokens", type=int, default=0, metavar="N")
    _output_modes(tokenize, jsonl=False)
    return parser


def _output_modes(parser: argparse.ArgumentParser, *, jsonl: bool, what: str = "") -> None:
    help_text = f"print JSON ({what})" if what else "print JSON for machines"
    if jsonl:
        parser.add_argument("--json", action="store_true", help="print the result as one JSON")
        parser.add_argument("--jsonl", action="store_true", help="print each chunk as JSON lines")
    else:
        parser.add_argument("--json", action="store_true", help=help_text)


# ----------------------------------------------------------------------------- running


def make_client(args: argparse.Namespace) -> Client:
    """The Client the connection flags (and their environment variables) describe."""
    tls: Any = None
    if getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None):
        tls = TLS(
            root_certificates=getattr(args, "tls_ca", None),
            certificate_chain=getattr(args, "tls_cert", None),
            private_key=getattr(args, "tls_key", None),
        )
    elif getattr(args, "tls", False):
        tls = True
    return Client(
        getattr(args, "target", None) or os.environ.get("ZOPILOT_TARGET") or DEFAULT_TARGET,
        api_key=getattr(args, "api_key", None) or os.environ.get("ZOPILOT_API_KEY") or None,
        tls=tls,
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
        retry=None if getattr(args, "no_retry", False) else RetryPolicy(),
        wait_for_ready=getattr(args, "wait_for_ready", False),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zopilot`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "max_new_tokens"):  # a command with generation parameters
        args.params = generation_params(args)
    try:
        with make_client(args) as client:
            if getattr(args, "wait_for_ready", False) and args.run is not commands.health:
                timeout = getattr(args, "timeout", None) or WAIT_FOR_READY_DEFAULT_S
                status = commands.wait_until_serving(client, timeout)
                if status is not HealthStatus.SERVING:
                    commands.report(
                        f"the server is not SERVING after {timeout:g} s ({status.value})"
                    )
                    return ExitCode.UNAVAILABLE
            return int(args.run(client, args))
    except ZopilotError as error:
        commands.report(commands.describe_error(error, args))
        return exit_code(error)
    except KeyboardInterrupt:
        commands.report("interrupted; the request was cancelled")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly like other Unix tools.
        commands.silence_stdout()
        return ExitCode.ERROR
    except (OSError, ValueError) as error:
        commands.report(str(error))
        return ExitCode.USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
