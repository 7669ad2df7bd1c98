"""The ceiling: ONNX Runtime in-process on the same CPUs a server gets, no server in the way.

Throughput at batch sizes 1..256 (the best of them is what no server running this model on these
CPUs can beat) and single-image latency. Uses the same ONNX file, the same digits and the same
session settings as the served model (graph optimisation "all", intra-op threads = the CPUs given).

    python -m loadtest.ceiling --cpus 1 --json build/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.common import served_names, spec_sample
from loadtest.loadgen import percentile_ms

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class CeilingResult:
    cpus: list[int]
    intra_op_threads: int
    images_per_s: dict[int, float] = field(default_factory=dict)  # batch size -> images/s
    # Per CPU-second of this process: what a CPU-bound server is compared with on a shared machine,
    # where other work takes wall time from both sides at different moments.
    images_per_cpu_s: dict[int, float] = field(default_factory=dict)
    batch1_latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[int, float]:
        batch = max(self.images_per_s, key=lambda b: self.images_per_s[b])
        return batch, self.images_per_s[batch]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["images_per_s"] = {str(k): v for k, v in self.images_per_s.items()}
        data["images_per_cpu_s"] = {str(k): v for k, v in self.images_per_cpu_s.items()}
        data["best_batch_size"], data["best_images_per_s"] = self.best
        return data


def measure(
    model: Path | None = None, batch_sizes: tuple[int, ...] = BATCH_SIZES, seconds_per_batch: float = 0.8,
    threads: int | None = None,
) -> CeilingResult:
    import onnxruntime as ort

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    threads = threads or len(cpus)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = model or served_names().onnx
    session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sample = spec_sample()
    result = CeilingResult(cpus=cpus, intra_op_threads=threads)
    for batch in batch_sizes:
        feeds = [sample.tensor_batch(start, batch)[0] for start in range(0, len(sample), batch)][:16]
        for f in feeds[:3]:
            session.run(None, {name: f})  # warm-up
        n, i = 0, 0
        timings: list[float] = []
        start, cpu_start = time.perf_counter(), time.process_time()
        while (now := time.perf_counter()) - start < seconds_per_batch:
            session.run(None, {name: feeds[i % len(feeds)]})
            i += 1
            n += batch
            if batch == 1:
                timings.append(time.perf_counter() - now)
        result.images_per_s[batch] = n / (time.perf_counter() - start)
        result.images_per_cpu_s[batch] = n / max(time.process_time() - cpu_start, 1e-9)
        if batch == 1:
            result.batch1_latency_ms = percentile_ms(timings)
        logger.info("in-process b%d: %.0f images/s, %.0f per CPU-second", batch, result.images_per_s[batch],
                    result.images_per_cpu_s[batch])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", help="comma list of CPUs to run on (default: this process's set)")
    parser.add_argument("--seconds", type=float, default=0.8, help="per batch size")
    parser.add_argument("--json", type=Path, help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    result = measure(seconds_per_batch=args.seconds)
    text = json.dumps(result.to_dict(), indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
