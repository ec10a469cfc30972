"""The module map of docs/architecture.md names every server module, and only those.

A new module without a row fails here, by name, until its row is written: the table is
the map a newcomer reads first, and a map that leaves out a module misleads.
"""

from __future__ import annotations

import re

from support import REPO

ROOT = REPO
PACKAGE = ROOT / "server" / "zopilot_server"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

_ROW = re.compile(r"^\|(?P<first>[^|]*)\|")
_NAME = re.compile(r"`([^`]+\.py)`")


def table_modules(page: str) -> list[str]:
    """Module paths (relative to the package) from the table headed ``| module |``.

    The first cell of a row names one or more modules in backticks; a name without a
    folder shares the folder of the name before it (``generation/a.py``, ``b.py``).
    """
    lines = page.splitlines()
    header = [i for i, line in enumerate(lines) if re.match(r"^\|\s*module\s*\|", line)]
    assert len(header) == 1, f"expected one table headed '| module |', found {len(header)}"
    names: list[str] = []
    for line in lines[header[0] + 2 :]:  # past the header and its --- row
        row = _ROW.match(line)
        if row is None:
            break  # the table ends at the first line that is not a row
        folder = ""
        for name in _NAME.findall(row["first"]):
            if "/" in name:
                folder = name.rsplit("/", 1)[0] + "/"
                names.append(name)
            else:
                names.append(folder + name)
    return names


def package_modules() -> list[str]:
    return sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    )


def test_table_parsing_reads_folders_and_shared_rows():
    page = "\n".join(
        [
            "text | with a bar",
            "| module | what it owns |",
            "| --- | --- |",
            "| `app.py` | the server |",
            "| `generation/a.py`, `b.py` | two, one folder |",
            "| `documents/c.py` | `not_a_module` in prose |",
            "",
            "| `after.py` | another table |",
        ]
    )
    assert table_modules(page) == [
        "app.py",
        "generation/a.py",
        "generation/b.py",
        "documents/c.py",
    ]


def test_module_map_matches_the_tree():
    listed = table_modules(ARCHITECTURE.read_text(encoding="utf-8"))
    on_disk = package_modules()
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    missing = [name for name in on_disk if name not in listed]
    stale = [name for name in listed if name not in on_disk]
    problems = []
    if missing:
        problems.append(
            "server modules with no row in docs/architecture.md's module map: " + ", ".join(missing)
        )
    if stale:
        problems.append(
            "docs/architecture.md's module map names modules that do not exist: " + ", ".join(stale)
        )
    if repeated:
        problems.append(
            "docs/architecture.md's module map lists more than once: " + ", ".join(repeated)
        )
    assert not problems, "\n".join(problems)
