"""Where a server's CPU time goes: per-process CPU seconds of a process tree, read from /proc.

The benchmark takes a snapshot before and after each load and reports how the server's CPU split
between the tritonserver process and each Python-backend stub (one process per model instance), and
how much of its CPU set it used. Linux only; elsewhere the snapshots are empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcCpu:
    pid: int
    name: str  # a readable name: the executable, or the Python-backend model instance it serves
    cpu_s: float


def _read_stat(pid: int) -> tuple[int, str, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split around its last ')'.
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
    return ppid, comm, cpu


def _describe(pid: int, comm: str) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return comm
    text = [a.decode(errors="replace") for a in args if a]
    if text and text[0].endswith("triton_python_backend_stub") and len(text) > 1:
        # The stub's first argument is the model.py path: .../<model>/<version>/model.py; the third
        # names the instance's shared-memory region, which ends with the instance name.
        parts = Path(text[1]).parts
        model = parts[-3] if len(parts) >= 3 else text[1]
        instance = text[2].rsplit("_", 1)[-1] if len(text) > 2 else ""
        return f"stub:{model}{'#' + instance if instance.isdigit() else ''}"
    return comm


def tree_cpu(root: int) -> dict[int, ProcCpu]:
    """CPU seconds so far of ``root`` and every descendant, by pid."""
    if not Path("/proc").is_dir():
        return {}
    stats: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _read_stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, ProcCpu] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            _, comm, cpu = stats[pid]
            out[pid] = ProcCpu(pid, _describe(pid, comm), cpu)
        todo.extend(children.get(pid, []))
    return out


def cpu_delta(before: dict[int, ProcCpu], after: dict[int, ProcCpu]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed by process name."""
    out: dict[str, float] = {}
    for pid, proc in after.items():
        spent = proc.cpu_s - (before[pid].cpu_s if pid in before else 0.0)
        out[proc.name] = out.get(proc.name, 0.0) + spent
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
