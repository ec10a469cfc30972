"""The configuration table of docs/configuration.md, generated from ServerConfig.

tests/integration/client/test_docs.py keeps the page in sync: a new setting without a
row fails the suite. `python scripts/config_table.py` prints the table; `--write`
replaces the one between the page's markers, so nobody pastes it by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from zopilot_server.config import ServerConfig, _default_cache_dir

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# The generated table sits between these two lines of the page.
MARKERS = re.compile(r"(<!-- config-table:begin[^>]*-->\n)(.*?)(\n<!-- config-table:end -->)", re.S)


def config_table() -> str:
    rows = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(ServerConfig):
        default = f.default
        if f.name == "cache_dir" and default == _default_cache_dir():
            default = "~/.cache/zopilot"
        shown = f"`{default}`" if default not in ("", None, ()) else "(empty)"
        choices = f.metadata.get("choices")
        meaning = f.metadata["help"] + (f" ({' / '.join(choices)})" if choices else "")
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{flag}` | `ZOPILOT_{f.name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows)


def page_table(page: str) -> str:
    """The table between the markers of ``page``; ValueError when the markers are gone."""
    match = MARKERS.search(page)
    if match is None:
        raise ValueError(f"{PAGE.name} lost its config-table markers")
    return match.group(2)


def with_table(page: str, table: str) -> str:
    """``page`` with the table between its markers replaced by ``table``."""
    page_table(page)  # the markers must be there
    return MARKERS.sub(lambda m: m.group(1) + table + m.group(3), page, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {PAGE}")
    args = parser.parse_args()
    if args.write:
        PAGE.write_text(with_table(PAGE.read_text(encoding="utf-8"), config_table()))
    else:
        print(config_table())


if __name__ == "__main__":
    main()
