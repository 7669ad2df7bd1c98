"""Soak: the ensemble at about 80 % of its peak for minutes, watching failures and the server's memory.

1. Peak: closed-loop HTTP ensemble requests at a few concurrencies (the project's load generator);
   the load level is the lowest concurrency whose throughput reaches 80 % of the best one.
2. Soak: that load in slices (10 s each) for the duration; after each slice the resident memory of
   tritonserver and its stubs (from /proc) is sampled.
3. Verdict: 0 failed requests, and memory flat: the last quarter's median RSS at most `max_growth`
   above the first quarter's (after a warm-up slice).

`make soak` runs 10 minutes against a server it starts; CI runs a short form
(tests/integration/test_soak.py). Writes soak.json and soak.png (RSS and throughput per slice).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.common import spec_sample
from loadtest.loadgen import run_load, triton_http_target

logger = logging.getLogger(__name__)

SLICE_S = 10.0


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and its children (tritonserver and its Python-backend stubs)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if int(entry.name) != root and ppid != root:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@dataclass
class SoakSlice:
    t_s: float
    requests: int
    failures: int
    throughput_rps: float
    p99_ms: float
    rss_mib: float
    first_error: str | None = None


@dataclass
class SoakResult:
    peak_rps: float
    peak_concurrency: int
    concurrency: int
    level: float  # throughput of the chosen concurrency / peak
    duration_s: float
    slices: list[SoakSlice] = field(default_factory=list)
    max_growth: float = 0.10

    @property
    def failures(self) -> int:
        return sum(s.failures for s in self.slices)

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.slices)

    def rss_growth(self) -> float:
        """Last quarter's median RSS over the first quarter's (the first slice is warm-up)."""
        rss = [s.rss_mib for s in self.slices[1:]] or [s.rss_mib for s in self.slices]
        q = max(1, len(rss) // 4)
        return statistics.median(rss[-q:]) / statistics.median(rss[:q]) - 1.0

    @property
    def passed(self) -> bool:
        return self.failures == 0 and self.rss_growth() <= self.max_growth

    def summary(self) -> str:
        return (f"soak: {self.duration_s:.0f} s at concurrency {self.concurrency} ({self.level:.0%} of the peak "
                f"{self.peak_rps:.0f} req/s at c{self.peak_concurrency}): {self.requests} requests, "
                f"{self.failures} failed; RSS {self.slices[0].rss_mib:.0f} -> {self.slices[-1].rss_mib:.0f} MiB, "
                f"growth {self.rss_growth():+.1%} (limit {self.max_growth:.0%}): "
                f"{'PASS' if self.passed else 'FAIL'}")

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "slices"},
                "failures": self.failures, "requests": self.requests, "rss_growth": self.rss_growth(),
                "passed": self.passed, "slices": [asdict(s) for s in self.slices]}


def soak(http_url: str, server_pid: int, duration_s: float, concurrencies: tuple[int, ...] = (1, 2, 4, 8),
         level: float = 0.8, max_growth: float = 0.10, progress: bool = True) -> SoakResult:
    target = triton_http_target(http_url, spec_sample(), ensemble=True)
    peaks = {c: run_load(target, c, duration_s=3.0, warmup_s=1.0).throughput_rps for c in concurrencies}
    peak_c = max(peaks, key=lambda c: peaks[c])
    chosen = min(c for c in concurrencies if peaks[c] >= level * peaks[peak_c])
    result = SoakResult(peaks[peak_c], peak_c, chosen, peaks[chosen] / peaks[peak_c], duration_s,
                        max_growth=max_growth)
    logger.info("peak %.0f req/s at c%d; soaking at c%d (%.0f%% of peak) for %.0f s", peaks[peak_c], peak_c,
                chosen, 100 * result.level, duration_s)
    started = time.monotonic()
    while time.monotonic() - started < duration_s:
        r = run_load(target, chosen, duration_s=SLICE_S, warmup_s=0.0)
        s = SoakSlice(time.monotonic() - started, r.requests, r.failures, r.throughput_rps,
                      r.latency_ms.get("p99", float("nan")), tree_rss_bytes(server_pid) / 2**20, r.first_error)
        result.slices.append(s)
        if progress:
            sys.stderr.write(f"  soak {s.t_s:5.0f}/{duration_s:.0f} s: {s.throughput_rps:6.0f} req/s, "
                             f"p99 {s.p99_ms:6.1f} ms, {s.failures} failed, RSS {s.rss_mib:7.1f} MiB\n")
    return result


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s / 60 for s in result.slices]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [s.rss_mib for s in result.slices], "o-", color="tab:blue", label="RSS (tritonserver + stubs)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [s.throughput_rps for s in result.slices], "s--", color="tab:orange", label="req/s")
    ax2.set_ylabel("requests/s", color="tab:orange")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"soak at c{result.concurrency} ({result.level:.0%} of peak): {result.failures} failed, "
                 f"RSS growth {result.rss_growth():+.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from build_tools.errors import ToolkitError
    from build_tools.server import ServerOptions, TritonServer
    from loadtest.servers import build_repository

    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="build/soak", help="folder for soak.json, soak.png and the server log")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth (0.10 = 10 %%)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        repo = build_repository(out / "repository")
        with TritonServer(ServerOptions([repo], log_file=out / "tritonserver.log", workdir=out / "work")) as server:
            assert server.process is not None
            result = soak(server.http_url, server.process.pid, args.minutes * 60, max_growth=args.max_growth)
    except ToolkitError as e:
        sys.stderr.write(f"soak: error: {e}\n")
        return 1
    (out / "soak.json").write_text(json.dumps(result.to_dict(), indent=2))
    plot(result, out / "soak.png")
    sys.stdout.write(result.summary() + f"\n  {out / 'soak.json'}, {out / 'soak.png'}\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
