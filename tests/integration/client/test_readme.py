"""The README is the short entry a newcomer reads: its commands exist, it stays short and
every link in it resolves (its code block runs in tests/test_docs.py)."""

from __future__ import annotations

import re
import subprocess

from pymdownx.slugs import slugify
from support import REPO

README = (REPO / "README.md").read_text()
# GitHub's anchor spelling, which mkdocs.yml's toc uses too.
_SLUG = slugify(case="lower")


def test_the_two_setup_commands_are_make_targets():
    assert "make run" in README and "make test" in README
    targets = subprocess.run(
        ["make", "-pn", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True
    )
    for target in ("run", "test", "install", "proto", "check", "docs"):
        assert re.search(rf"^{target}:", targets.stdout, re.M), target


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_install_is_idempotent():
    """After `make install`, make considers it up to date: a second run does nothing."""
    result = subprocess.run(["make", "-q", "install"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, "make install would run again although nothing changed"


def test_readme_fits_on_a_few_screens():
    lines = README.count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move the detail into docs/"


def anchors(markdown: str) -> set[str]:
    """The heading anchors of a page, as GitHub and the site spell them."""
    text = re.sub(r"^```.*?^```$", "", markdown, flags=re.S | re.M)  # no headings in code
    found: set[str] = set()
    for title in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M):
        slug = base = _SLUG(title, "-")
        count = 0
        while slug in found:  # a repeated heading gets -1, -2, ...
            count += 1
            slug = f"{base}-{count}"
        found.add(slug)
    return found


def test_anchor_spelling_matches_github():
    page = "# API\n## Other protocols: KServe v2 / Triton and TGIS\n## `--max-queue`\n## API\n"
    assert anchors(page) == {
        "api",
        "other-protocols-kserve-v2--triton-and-tgis",
        "--max-queue",
        "api-1",
    }


def test_readme_links_resolve():
    """Every relative link names a file of the repository, and its anchor a heading there."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in relative)
    broken = []
    for link in relative:
        path, _, anchor = link.partition("#")
        target = REPO / path if path else REPO / "README.md"
        if not target.is_file():
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, "README links that do not resolve:\n" + "\n".join(broken)


def test_readme_links_every_docs_section_a_newcomer_asks_for():
    """GPU, quantization, Kubernetes and the client: one click from the README."""
    for page in (
        "docs/operations.md#sizing-a-gpu",
        "docs/concepts/quantization.md",
        "docs/operations.md#kubernetes",
        "docs/client.md",
    ):
        assert f"]({page})" in README, page
