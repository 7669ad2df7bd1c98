"""A CPU hog: busy processes pinned beside the server, the way a shared production host steals CPU.

Each hog process spins in pure Python at normal priority on one of the given CPUs until stopped, so the
server's threads (HTTP/gRPC front end, the dynamic batcher, the Python-backend stubs) compete for
their CPU with a process that never sleeps. Used by the stall reproduction and the CI load check.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)


def _spin(cpu: int | None, stop: mp.synchronize.Event) -> None:  # runs in the hog process
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    x = 0
    while not stop.is_set():
        for _ in range(200_000):  # check the stop flag every few milliseconds
            x += 1


@contextlib.contextmanager
def cpu_hog(cpus: frozenset[int] | None, per_cpu: int = 1) -> Iterator[int]:
    """Run ``per_cpu`` spinning processes on each CPU of ``cpus`` (none when per_cpu is 0); yields how
    many run. They are stopped and joined when the block ends."""
    targets: list[int | None] = [c for c in sorted(cpus or []) for _ in range(per_cpu)] if cpus else (
        [None] * per_cpu)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spin, args=(cpu, stop), daemon=True) for cpu in targets]
    for p in procs:
        p.start()
    logger.info("CPU hog: %d spinning process(es) on CPU(s) %s", len(procs),
                sorted(cpus) if cpus else "any")
    try:
        yield len(procs)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
