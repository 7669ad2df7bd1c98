"""A/B cost measurements: what one variant of a server costs against another, in one run.

Shared by the commands that measure a cost (`loadtest.router_cost`, `loadtest.monitor_cost`, and the
smaller in-process ones, `loadtest.preprocess_cost` and `loadtest.oversize`): the interleaved rounds
(every side of a comparison measured in each round, the order rotating round by round, so the
machine's load hits all sides alike), the server's CPU per answered request (every process of its
tree, from /proc: on a shared machine far less disturbed than requests per second), the medians of
per-round ratios, the per-round plot, the report's footer (command, load average, CPU pinning) and
the command-line options every such command takes.

A comparison is a set of *paths* (what is sent, e.g. the ensemble with PNG bytes), each with its
*sides* (e.g. without and with the router), one of them the reference the others are divided by.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import loadgen, procstat
from loadtest.bench import loadavg
from loadtest.errors import LoadTestError
from loadtest.servers import DEFAULT_SPEC, affinity

__all__ = ["Side", "add_common_options", "command_line", "footer", "interleaved", "loadavg", "plot_rounds",
           "run_rounds", "summarize", "write_outputs"]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a load target and the pid of the server that answers it (for its CPU)."""

    target: loadgen.Target
    server_pid: int | None = None


def interleaved(labels: Sequence[str], round_index: int) -> list[str]:
    """The order of the sides in round `round_index` (from 1): the list rotated by one place a round, so
    over n rounds each of n sides runs once in every position (two sides: as given, then reversed).
    Reversing alone kept the middle one of three sides in the middle in every round."""
    items = list(labels)
    k = (round_index - 1) % len(items) if items else 0
    return items[k:] + items[:k]


def _tree_cpu_s(pid: int | None) -> float:
    return sum(p.cpu_s for p in procstat.tree_cpu(pid).values()) if pid else 0.0


def run_rounds(paths: dict[str, dict[str, Side]], rounds: int, seconds: float, concurrency: int,
               client_cpus: frozenset[int] | None, warmup_s: float = 1.0) -> list[dict[str, Any]]:
    """One row per round and path: `<side>_rps`, `<side>_p99_ms` and, where the side names its server,
    `<side>_cpu_ms` (the server tree's CPU per answered request, warm-up included: CPU is read around the
    whole run). A failed request stops the measurement: a cost measured on errors means nothing."""
    rows = []
    for r in range(1, rounds + 1):
        for path, sides in paths.items():
            row: dict[str, Any] = {"round": r, "path": path}
            for label in interleaved(list(sides), r):
                side = sides[label]
                with affinity(client_cpus):
                    before = _tree_cpu_s(side.server_pid)
                    res = loadgen.run_load(side.target, concurrency, duration_s=seconds, warmup_s=warmup_s)
                    used = _tree_cpu_s(side.server_pid) - before
                if res.failures:
                    raise LoadTestError(f"{side.target.name} ({path}, {label}): {res.failures} failed requests "
                                        f"({res.first_error})")
                row[f"{label}_rps"] = res.throughput_rps
                row[f"{label}_p99_ms"] = res.latency_ms["p99"]
                if side.server_pid:
                    row[f"{label}_cpu_ms"] = 1000.0 * used / max(1, res.answered)
                cpu = f", server CPU {row[f'{label}_cpu_ms']:.2f} ms/request" if side.server_pid else ""
                sys.stderr.write(f"round {r}/{rounds} {path} {label}: {res.throughput_rps:,.0f} req/s, "
                                 f"p99 {res.latency_ms['p99']:.1f} ms{cpu}\n")
            rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], reference: str) -> dict[str, dict[str, float]]:
    """Per path, medians over the rounds of each side's figures, and of each side's per-round ratios to
    the reference side: `<side>_ratio` (requests/s, side / reference) and `<side>_cpu_ratio` (CPU per
    request, side / reference). Ratios are taken within a round, then the median: both sides of a ratio
    saw the same minute of the machine."""
    out: dict[str, dict[str, float]] = {}
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        sides = [k.removesuffix("_rps") for k in mine[0] if k.endswith("_rps")]
        s: dict[str, float] = {}
        for side in sides:
            for key in ("rps", "p99_ms", "cpu_ms"):
                if all(f"{side}_{key}" in r for r in mine):
                    s[f"{side}_{key}"] = statistics.median(r[f"{side}_{key}"] for r in mine)
            if side == reference:
                continue
            s[f"{side}_ratio"] = statistics.median(r[f"{side}_rps"] / r[f"{reference}_rps"] for r in mine)
            if all(f"{side}_cpu_ms" in r and f"{reference}_cpu_ms" in r for r in mine):
                s[f"{side}_cpu_ratio"] = statistics.median(r[f"{side}_cpu_ms"] / r[f"{reference}_cpu_ms"]
                                                           for r in mine)
        out[path] = s
    return out


def plot_rounds(rows: list[dict[str, Any]], out: Path, legends: dict[str, str], concurrency: int) -> None:
    """Requests/s per round for every side (and server CPU per request, where measured), one column per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(r["path"] for r in rows))
    with_cpu = any(k.endswith("_cpu_ms") for r in rows for k in r)
    panels = [("rps", "requests/s")] + ([("cpu_ms", "server CPU ms per request")] if with_cpu else [])
    fig, axes = plt.subplots(len(panels), len(paths), figsize=(5 * len(paths), 4 * len(panels)), squeeze=False)
    markers = "os^vD*"
    for row_axes, (key, unit) in zip(axes, panels):
        for ax, path in zip(row_axes, paths):
            mine = [r for r in rows if r["path"] == path]
            x = [r["round"] for r in mine]
            for i, (side, legend) in enumerate(legends.items()):
                if all(f"{side}_{key}" in r for r in mine):
                    ax.plot(x, [r[f"{side}_{key}"] for r in mine], f"{markers[i % len(markers)]}-", label=legend)
            ax.set_title(f"{path}, concurrency {concurrency}")
            ax.set_xticks(x)
            ax.set_xlabel("round (interleaved)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def add_common_options(p: argparse.ArgumentParser, rounds: int = 3, seconds: float = 5.0,
                       concurrency: int = 16) -> argparse.ArgumentParser:
    """--spec, --out, --rounds, --seconds, --concurrency (the options every A/B command takes)."""
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the spec the servers are built from")
    p.add_argument("--out", type=Path, default=Path("bench"), help="folder for the report (md, json, png)")
    p.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    p.add_argument("--seconds", type=float, default=seconds, help="measured seconds per side and round")
    p.add_argument("--concurrency", type=int, default=concurrency, help="closed-loop clients")
    return p


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as typed, for the report (so a reader can rerun exactly it)."""
    args = list(argv if argv is not None else sys.argv[1:])
    return " ".join([f"python -m {module}", *args])


def footer(meta: dict[str, Any]) -> str:
    """The report's line on how it was measured: command, rounds, pinning and the machine's load."""
    return (f"`{meta['command']}`: concurrency {meta['concurrency']}, {meta['rounds']} interleaved rounds of "
            f"{meta['seconds']:g} s per side, HTTP, batch 1; {meta['cpus']}; load average {meta['load_before']} "
            f"(start) / {meta['load_after']} (end).")


def write_outputs(out: Path, stem: str, payload: dict[str, Any], markdown: str,
                  plot: Callable[[Path], None] | None = None) -> list[Path]:
    """OUT/<stem>.json, OUT/<stem>.md and (with `plot`) OUT/<stem>.png; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    written[1].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    if plot is not None:
        written.append(out / f"{stem}.png")
        plot(written[-1])
    return written
