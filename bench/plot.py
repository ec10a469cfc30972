"""Draw the figures of docs/benchmarks.md from the benches' JSON output.

Reads the JSON that ``bench/concurrency.py`` and ``bench/serving.py`` print and writes one
PNG per figure (names in ``FIGURES``), so a page's plots are redrawn from the numbers
committed beside them, never edited by hand:

- ``tokens-per-s.png`` (concurrency): aggregate output tokens/s against the number of
  concurrent streams, the server over gRPC beside in-process batch ``generate``;
- ``serving-latency.png`` (serving): per workload, TTFT p50 / p90 and inter-token
  p50 / p99, from every prefix-cache-on server of the report.

    .venv/bin/python bench/concurrency.py --model smollm2 > docs/figures/concurrency.json
    .venv/bin/python bench/serving.py --model smollm2 --prefix-cache on \\
        > docs/figures/serving.json
    .venv/bin/python bench/plot.py --concurrency docs/figures/concurrency.json \\
        --serving docs/figures/serving.json --out docs/figures --label "2026-12-08, 2-core CPU"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt

FIGURES = {"concurrency": "tokens-per-s.png", "serving": "serving-latency.png"}
# PNG metadata without the matplotlib version, so a redraw of the same JSON with another
# matplotlib does not show up as a change of every figure.
PNG_METADATA = {"Software": None}


def load_report(path: Path, benchmark: str) -> dict[str, Any]:
    """A bench's JSON report; ValueError when it is another bench's (or not a report)."""
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or report.get("benchmark") != benchmark:
        raise ValueError(f"{path}: not the JSON of bench/{benchmark}.py")
    return report


def tokens_per_s_series(report: dict[str, Any]) -> dict[str, list[float]]:
    """Streams N and the aggregate tokens/s of both sides, in N order."""
    rows = sorted(report["results"], key=lambda row: row["n"])
    return {
        "n": [row["n"] for row in rows],
        "grpc": [row["grpc"]["tokens_per_s"] for row in rows],
        "in_process": [row["in_process"]["tokens_per_s"] for row in rows],
    }


def latency_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (prefix-cache-on server, workload): TTFT and inter-token percentiles."""
    rows = []
    for key, entry in report.items():
        if not key.startswith("reuse_on") or not isinstance(entry, dict):
            continue
        for workload, figures in entry.items():
            if isinstance(figures, dict) and "ttft_p50_s" in figures:
                label = workload if key == "reuse_on" else f"{workload} ({key[len('reuse_on_') :]})"
                rows.append({"label": label, **figures})
    if not rows:
        raise ValueError("the serving report has no prefix-cache-on workload figures")
    return rows


def plot_tokens_per_s(report: dict[str, Any], out: Path, label: str) -> Path:
    series = tokens_per_s_series(report)
    figure, axes = plt.subplots(figsize=(6.4, 4))
    axes.plot(series["n"], series["grpc"], marker="o", label="server (GenerateStream over gRPC)")
    axes.plot(series["n"], series["in_process"], marker="s", label="in-process batch generate")
    axes.set_xscale("log", base=2)
    axes.set_xticks(series["n"], [str(n) for n in series["n"]])
    axes.set_xlabel("concurrent streams")
    axes.set_ylabel("output tokens/s (all streams)")
    axes.set_title(f"{report['model']}, {report['new_tokens']} tokens each ({label})", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, out / FIGURES["concurrency"])


def plot_serving(report: dict[str, Any], out: Path, label: str) -> Path:
    rows = latency_rows(report)
    positions = range(len(rows))
    width = 0.38
    figure, (ttft, itl) = plt.subplots(1, 2, figsize=(9, 4))
    # TTFT spans chats (tenths of a second) to documents (seconds): a log axis, each bar
    # labelled with its value; inter-token gaps stay within one order: a linear axis.
    for axes, low, high, unit, scale in (
        (ttft, "ttft_p50_s", "ttft_p90_s", "TTFT (s)", "log"),
        (itl, "itl_p50_ms", "itl_p99_ms", "inter-token (ms)", "linear"),
    ):
        for shift, key in ((-width / 2, low), (width / 2, high)):
            heights = [row[key] for row in rows]
            bars = axes.bar([p + shift for p in positions], heights, width, label=key.split("_")[1])
            axes.bar_label(bars, fmt="%.3g", fontsize=7)
        axes.set_xticks(list(positions), [r["label"] for r in rows], rotation=20)
        axes.set_ylabel(unit)
        axes.set_yscale(scale)
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    args = report.get("args", {})
    figure.suptitle(
        f"{report['model']}: {args.get('requests')} requests per workload, Poisson "
        f"{args.get('rate')}/s, {args.get('tokens')} tokens ({label})",
        fontsize=9,
    )
    return _save(figure, out / FIGURES["serving"])


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=Path, help="bench/concurrency.py's JSON")
    parser.add_argument("--serving", type=Path, help="bench/serving.py's JSON")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--label", default="", help="when and where it ran, for the titles")
    args = parser.parse_args()
    if not (args.concurrency or args.serving):
        parser.error("give --concurrency and/or --serving")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.concurrency:
        report = load_report(args.concurrency, "concurrency")
        written.append(plot_tokens_per_s(report, args.out, args.label))
    if args.serving:
        written.append(plot_serving(load_report(args.serving, "serving"), args.out, args.label))
    print(json.dumps({"written": [str(path) for path in written]}))


if __name__ == "__main__":
    main()
