"""``python -m zopilot_server`` / ``zopilot-server``: run the gRPC server until SIGTERM."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
from collections.abc import Sequence

from .config import load_config
from .generation.loading.default_model import DefaultModelUnavailable
from .generation.loading.model_loader import ModelLoadError
from .generation.loading.quantization import QuantizationUnsupported
from .security import KEY_ON_COMMAND_LINE, key_on_command_line

# Startup problems the operator can fix: one clear line and exit code 2, no traceback.
CONFIGURATION_ERRORS = (ModelLoadError, QuantizationUnsupported, DefaultModelUnavailable)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # transformers' progress bars and advice are noise in a server log.
    for noisy in ("transformers", "accelerate", "docstrange"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = load_config(argv)
    configure_logging(config.log_level)
    if key_on_command_line(argv):
        logging.getLogger("zopilot_server").warning(KEY_ON_COMMAND_LINE)
    from .app import serve  # after logging: importing grpc/torch can log

    try:
        return asyncio.run(serve(config))
    except CONFIGURATION_ERRORS as exc:
        logging.getLogger("zopilot_server").error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


def run() -> None:
    """The process entry point: ``main``, then exit without the interpreter's teardown.

    The server has closed everything itself by then (scheduler joined, parser workers and
    scratch folder gone). What is left, finalizing torch, transformers and grpc, took
    8-15 s of a SIGTERM on a machine with its cores oversubscribed (0.5 s quiet), eating
    into an orchestrator's kill deadline; the atexit handlers still run, and took 0.03 s.
    """
    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
