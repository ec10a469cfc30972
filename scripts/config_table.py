"""Print the README's configuration table from ServerConfig
(tests/integration/client/test_readme.py keeps them in sync: a new setting without a
README row fails the suite)."""

from __future__ import annotations

import dataclasses

from zopilot_server.config import ServerConfig, _default_cache_dir


def config_table() -> str:
    rows = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(ServerConfig):
        default = f.default
        if f.name == "cache_dir" and default == _default_cache_dir():
            default = "~/.cache/zopilot"
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        choices = f.metadata.get("choices")
        meaning = f.metadata["help"] + (f" ({' / '.join(choices)})" if choices else "")
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{flag}` | `ZOPILOT_{f.name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table())
