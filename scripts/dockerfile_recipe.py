"""A Dockerfile read as data: instructions, ARG defaults, ENV, and its ``pip install`` runs.

Enough of Dockerfile and shell syntax for the image checks (scripts/image_checks.py) to
ask questions such as "which RUN installs torch, from which index, before what": joined
continuation lines, comments, ``$X`` / ``${X:-w}`` / ``${X:+w}`` substitution, and RUN
lines split into simple commands at ``&&``, ``;`` and ``if``/``then``/``fi``.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

# The image's verifier lives with the image's tooling (docker/), run there as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))
from verify_env import normalize

_SEPARATORS = {"&&", "||", ";", "|", "if", "then", "else", "elif", "fi", "do", "done"}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions in order; comment lines (also inside continuations) are dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and not stripped:
            continue
        if stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, value = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip(), start))
            pending = []
    return instructions


def arg_defaults(instructions: Sequence[Instruction]) -> dict[str, str]:
    """``ARG NAME=default`` values (quotes removed); ARGs without a default are omitted."""
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            name, eq, default = shlex.split(ins.value)[0].partition("=")
            if eq:
                args[name] = default
    return args


def env_values(instructions: Sequence[Instruction]) -> dict[str, str]:
    """``ENV`` assignments (``KEY=value`` form), unexpanded."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.value):
                key, eq, value = word.partition("=")
                if eq:
                    env[key] = value
    return env


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Dockerfile-style ``$X``, ``${X}``, ``${X:-word}`` and ``${X:+word}`` substitution."""

    def substitute(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        value = variables.get(name, "")
        if match["op"] == ":-":
            return value or match["word"]
        if match["op"] == ":+":
            return match["word"] if value else ""
        return value

    pattern = r"\$(?:\{(?P<braced>\w+)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}|(?P<bare>\w+))"
    return re.sub(pattern, substitute, text)


def run_commands(value: str) -> list[list[str]]:
    """The simple commands of a RUN line: its shell words, split at ``&&``, ``;``, ``if``..."""
    words = [w for w in shlex.split(value.replace(";", " ; ")) if not w.startswith("--mount=")]
    commands: list[list[str]] = [[]]
    for word in words:
        if word in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def pip_install_args(command: Sequence[str]) -> list[str] | None:
    """The arguments after ``pip install`` / ``python -m pip install``; None if not pip."""
    for i, word in enumerate(command[:-1]):
        if Path(word).name in {"pip", "pip3"} and command[i + 1] == "install":
            return list(command[i + 2 :])
    return None


def is_verification(command: Sequence[str]) -> bool:
    return any(w.endswith("verify_env.py") for w in command)


def option(args: Sequence[str], *names: str) -> list[str]:
    """Every value of the options ``names`` in ``args`` (``-c X``, ``--constraint=X``)."""
    values = []
    for i, word in enumerate(args):
        name, eq, value = word.partition("=")
        if name in names:
            values.append(value if eq else (args[i + 1] if i + 1 < len(args) else ""))
    return values


def package_args(args: Sequence[str]) -> list[str]:
    """The requirement specifiers among pip arguments (options and their values skipped)."""
    takes_value = {"-c", "-r", "--constraint", "--requirement", "--index-url", "-i"}
    takes_value |= {"--extra-index-url", "--find-links", "-f"}
    specs: list[str] = []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in takes_value
        else:
            specs.append(word)
    return specs


def requirement_name(spec: str) -> str | None:
    """The normalised project name of a requirement specifier; None for a local path."""
    if spec.startswith((".", "/")):
        return None
    try:
        return normalize(Requirement(spec).name)
    except InvalidRequirement:
        return None


@dataclass(frozen=True)
class Command:
    """One simple command of a RUN line, with ARGs and ENVs expanded."""

    index: int  # position of its RUN among the instructions
    line: int  # where that RUN starts
    seq: int  # position among all the commands of the Dockerfile
    words: tuple[str, ...]


@dataclass(frozen=True)
class PipInstall:
    """One ``pip install`` in the Dockerfile: where it runs and its arguments."""

    index: int
    line: int
    seq: int
    args: tuple[str, ...]

    @property
    def packages(self) -> list[str]:
        return package_args(self.args)

    @property
    def names(self) -> set[str]:
        return {n for n in map(requirement_name, self.packages) if n}

    @property
    def installs_app(self) -> bool:
        """Local project directories only, without their dependencies: the application."""
        return "--no-deps" in self.args and all(p.startswith("/") for p in self.packages)


@dataclass
class Recipe:
    """The facts about a Dockerfile that the invariants are about."""

    instructions: list[Instruction]
    args: dict[str, str]
    env: dict[str, str]
    installs: list[PipInstall] = field(default_factory=list)
    verifications: list[Command] = field(default_factory=list)

    @classmethod
    def read(cls, text: str) -> Recipe:
        instructions = parse_dockerfile(text)
        recipe = cls(instructions, arg_defaults(instructions), env_values(instructions))
        variables = {**recipe.env, **recipe.args}
        seq = 0
        for index, ins in enumerate(instructions):
            if ins.keyword != "RUN":
                continue
            for words in run_commands(ins.value):
                seq += 1
                command = Command(index, ins.line, seq, tuple(expand(w, variables) for w in words))
                pip_args = pip_install_args(command.words)
                if pip_args is not None:
                    recipe.installs.append(PipInstall(index, ins.line, seq, tuple(pip_args)))
                elif is_verification(command.words):
                    recipe.verifications.append(command)
        return recipe

    def installs_of(self, name: str) -> list[PipInstall]:
        return [i for i in self.installs if name in i.names]

    def requirements_installs(self) -> list[PipInstall]:
        return [i for i in self.installs if option(i.args, "-r", "--requirement")]
