"""What a parser worker does to itself before it touches a document.

- No network: Python's socket API refuses every non-Unix socket and every name lookup
  at once (an OSError, never a hang), so docstrange's downloaders, its cloud client and
  its Ollama probe all fail fast. Where the kernel allows it (root, or unprivileged user
  namespaces) the worker also moves into a fresh network namespace that has no
  interfaces, which covers C code that bypasses Python's socket module.
- No surprising writes: HOME, XDG dirs and TMPDIR point into the server's private scratch
  folder (deleted on shutdown); model caches point at the configured OCR model dir;
  Hugging Face libraries are told they are offline.
- No credentials: the server's API key and any token-like variables are removed from
  the worker's environment, so nothing can find a key and switch to a cloud mode.
- Quiet: docstrange prints banners to stdout; the worker's stdout goes to /dev/null.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import re
import resource
import shutil
import socket
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_ORIGINAL_SOCKET = socket.socket
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is told (pickled into it at spawn)."""

    scratch_root: str
    home_dir: str
    model_dir: str
    fault_injection: bool = False
    log_level: str = "WARNING"
    memory_limit_bytes: int = 0  # address space a parse may add (RLIMIT_AS); 0 = none


class NetworkDisabled(PermissionError):
    """Raised by any network call inside a parser worker."""


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise NetworkDisabled("network access is disabled in document parser workers")


class _GuardedSocket(_ORIGINAL_SOCKET):
    """socket.socket that only allows Unix sockets (and wrapping an existing fd)."""

    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        if fileno is None and family != socket.AF_UNIX:
            _refuse()
        super().__init__(family, type, proto, fileno)


def install_socket_guard() -> None:
    """Make every Python-level network attempt fail at once with NetworkDisabled."""
    socket.socket = _GuardedSocket  # type: ignore[misc]
    for name in (
        "create_connection",
        "create_server",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
    ):
        setattr(socket, name, _refuse)


def enter_empty_network_namespace() -> bool:
    """Leave the host's network for a namespace with no interfaces, if the kernel lets us."""
    unshare = getattr(_libc(), "unshare", None)
    if unshare is None:
        return False
    if unshare(CLONE_NEWNET) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return False
    # Map our own ids into the new user namespace, or files we create get no owner.
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(path, "w") as handle:
                handle.write(text)
        except OSError:
            pass
    return True


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def private_environment(settings: WorkerSettings) -> dict[str, str]:
    """Environment overrides that keep caches, temp files and config out of real HOME."""
    home = settings.home_dir
    return {
        "HOME": home,
        "XDG_CACHE_HOME": os.path.join(home, ".cache"),
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "MPLCONFIGDIR": os.path.join(home, ".config", "matplotlib"),
        "TMPDIR": settings.scratch_root,
        "EASYOCR_MODULE_PATH": os.path.join(settings.model_dir, "easyocr"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "*",
    }


def drop_secrets(environ: MutableMapping[str, str]) -> None:
    """Remove credentials (our API key, cloud and hub tokens) a parser has no use for, so
    no library finds a key and switches to a cloud mode. (The process's initial
    environment in /proc stays as it was spawned; this is not a secrecy boundary.)"""
    for name in list(environ):
        if name.startswith("ZOPILOT_") or _SECRET_NAME.search(name):
            del environ[name]


def address_space_bytes() -> int:
    """This process's current virtual size (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def limit_memory(budget_bytes: int) -> int:
    """Cap this process's address space at its current size plus ``budget_bytes``; past
    it, allocations fail (MemoryError in Python), so a decompression bomb costs one
    worker at most the budget, never the machine. Called once the parser libraries are
    imported, so their mapped code (large for CUDA builds of torch) is not counted
    against the documents. An address-space cap rather than a cgroup: it needs no
    privileges. Returns the cap (0: none)."""
    if budget_bytes <= 0:
        return 0
    cap = address_space_bytes() + budget_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


SCRATCH_PREFIX = "zopilot-docs-"
_OWNER_LOCK = ".owner.lock"
_UNLOCKED_GRACE_S = 60.0  # a dir this young without a lock may be a server starting up


def claim_scratch_root(root: str) -> int:
    """Mark ``root`` as in use by this process for as long as it lives: an exclusive
    flock, which the kernel releases when the process dies, SIGKILL included. Returns
    the lock's fd (keep it open)."""
    fd = os.open(os.path.join(root, _OWNER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_stale_scratch(parent: str) -> list[str]:
    """Delete scratch folders that servers killed without cleanup (SIGKILL, OOM) left in
    ``parent``: those whose owner lock nobody holds. Returns the removed paths."""
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(SCRATCH_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if os.path.islink(path) or not os.path.isdir(path) or not _abandoned(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _abandoned(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, _OWNER_LOCK), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # left by an older version, or one just being created
        try:
            return time.time() - os.stat(path).st_mtime > _UNLOCKED_GRACE_S
        except OSError:
            return False
    except OSError:
        return False  # not ours to judge (another user's, unreadable)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its server is alive
    finally:
        os.close(fd)
    return True


# Read into ServerConfig at startup and never needed again.
SERVER_SECRETS = ("ZOPILOT_API_KEY",)


def scrub_server_secrets(environ: MutableMapping[str, str]) -> None:
    """Remove the server's own secrets from its environment before it spawns a worker.

    A spawned process starts with a copy of the parent's environment, and that initial
    copy stays readable in /proc/PID/environ whatever the child deletes later; only a
    variable absent at spawn time is truly absent. The server read its key at startup."""
    for name in SERVER_SECRETS:
        environ.pop(name, None)


def prepare_worker(settings: WorkerSettings) -> str:
    """Isolate this (fresh, spawned) process; return a description of the network guard."""
    drop_secrets(os.environ)
    os.environ.update(private_environment(settings))
    os.makedirs(settings.home_dir, exist_ok=True)
    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s docworker[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("docstrange").setLevel(logging.ERROR)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the worker
    namespaced = enter_empty_network_namespace()
    install_socket_guard()
    return "socket-guard+netns" if namespaced else "socket-guard"
