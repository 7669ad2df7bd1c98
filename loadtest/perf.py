"""perf_analyzer sweeps: concurrency x batch size, per model, over HTTP and gRPC, optionally with
system shared memory; results as typed rows, a CSV and a PNG plot (throughput against p99 latency).

The binary is the real perf_analyzer from the tritonclient 2.51.0 wheel, installed into the
virtualenv by ``make perf-analyzer`` (.venv/bin/perf_analyzer); ``PERF_ANALYZER`` or a perf_analyzer
on PATH are used otherwise.

The ensemble's BYTES input gets real PNG digits through ``--input-data`` JSON: each step's ``b64`` is
the base64 of one serialized BYTES element (4-byte little-endian length, then the PNG), which
perf_analyzer sends as is; it concatenates consecutive steps into a batch.

    python -m loadtest.perf --out build/perf                      # starts an embedded server
    python -m loadtest.perf --http-url H:8000 --grpc-url H:8001   # an existing one
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from build_tools.server import grpc_admin_header
from loadtest.common import Sample, served_names, spec_sample
from loadtest.errors import PerfAnalyzerError
from loadtest.loadgen import _serialize_bytes
from loadtest.servers import ROOT

logger = logging.getLogger(__name__)

# Where loadtest/install_perf_analyzer.sh puts it: the virtualenv's bin, on PATH when it is active.
INSTALLED = Path(sys.executable).parent / "perf_analyzer"
INSTALL_HINT = "run `make perf-analyzer` (installs it as .venv/bin/perf_analyzer)"


@dataclass(frozen=True)
class PerfRow:
    """One perf_analyzer measurement (latencies in microseconds, as perf_analyzer reports them)."""

    model: str
    protocol: str
    shared_memory: str
    batch_size: int
    concurrency: int
    inferences_per_s: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float
    client_send_us: float
    network_server_us: float
    server_queue_us: float
    server_compute_input_us: float
    server_compute_infer_us: float
    server_compute_output_us: float
    client_recv_us: float
    stable: bool = True

    @property
    def requests_per_s(self) -> float:
        return self.inferences_per_s / self.batch_size

    @property
    def label(self) -> str:
        shm = "" if self.shared_memory == "none" else f" shm={self.shared_memory}"
        return f"{self.model} {self.protocol} b{self.batch_size}{shm}"


# perf_analyzer's CSV header -> PerfRow field
_COLUMNS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "inferences_per_s",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
}


def find_perf_analyzer() -> Path | None:
    for candidate in (os.environ.get("PERF_ANALYZER"), str(INSTALLED), shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def parse_csv(path: Path, model: str, protocol: str, shared_memory: str, batch_size: int,
              stable: bool = True) -> list[PerfRow]:
    """perf_analyzer's ``-f`` CSV (with or without --verbose-csv) -> rows; raises on a CSV it cannot read."""
    try:
        text = path.read_text()
    except OSError as e:
        raise PerfAnalyzerError(f"perf_analyzer wrote no CSV at {path}: {e.strerror}") from e
    reader = csv.DictReader(line for line in text.splitlines() if line.strip())
    missing = [c for c in ("Concurrency", "Inferences/Second", "p99 latency") if c not in (reader.fieldnames or [])]
    if missing:
        raise PerfAnalyzerError(f"{path}: not a perf_analyzer CSV (missing columns {missing})")
    rows = []
    for raw in reader:
        values = {field: float(raw[col]) for col, field in _COLUMNS.items() if raw.get(col) not in (None, "")}
        try:
            values["concurrency"] = int(values["concurrency"])
            rows.append(PerfRow(model=model, protocol=protocol, shared_memory=shared_memory,
                                batch_size=batch_size, stable=stable,
                                **{f.name: values.get(f.name, 0.0) for f in fields(PerfRow)
                                   if f.name not in ("model", "protocol", "shared_memory", "batch_size", "stable")}))
        except (KeyError, ValueError) as e:
            raise PerfAnalyzerError(f"{path}: cannot read row {raw}: {e}") from e
    if not rows:
        raise PerfAnalyzerError(f"{path}: perf_analyzer CSV has no measurement")
    return rows


def write_input_data(path: Path, sample: Sample | None = None, count: int = 100) -> Path:
    """The ensemble's --input-data JSON: ``count`` PNG digits of the sample, one BYTES element per step."""
    sample = sample or spec_sample()
    steps = [{served_names().ensemble_input: {"b64": base64.b64encode(_serialize_bytes([png])).decode("ascii")}}
             for png in sample.pngs[:count]]
    path.write_text(json.dumps({"data": steps}))
    return path


@dataclass
class PerfSettings:
    measurement_ms: int = 2000
    stability_percentage: int = 30
    max_trials: int = 6
    timeout_s: float = 120.0


def run_perf_analyzer(
    binary: Path, url: str, model: str, protocol: str, batch_size: int, concurrency: int, workdir: Path,
    shared_memory: str = "none", input_data: Path | None = None, settings: PerfSettings | None = None,
    headers: dict[str, str] | None = None,
) -> list[PerfRow]:
    """One perf_analyzer run at one concurrency. If the measurement does not stabilise within
    max_trials windows, it is run once more accepting any window, and the row says stable=False."""
    settings = settings or PerfSettings()
    out_csv = workdir / f"{model}_{protocol}_{shared_memory}_b{batch_size}_c{concurrency}.csv"
    base = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", str(batch_size),
            "--concurrency-range", str(concurrency), "--measurement-mode", "time_windows",
            "-p", str(settings.measurement_ms), "-r", str(settings.max_trials),
            "-f", str(out_csv), "--verbose-csv"]
    if shared_memory != "none":
        base += ["--shared-memory", shared_memory]
    # perf_analyzer's default random FP32 data is raw random bytes (NaN, huge values), which a model with a
    # declared input range refuses; zeros are valid for any numeric tensor.
    base += ["--input-data", str(input_data) if input_data is not None else "zero"]
    for key, value in (headers or {}).items():
        # The server's restricted APIs (statistics, shared-memory registration) need the admin header;
        # over gRPC Triton 2.51 reads it as metadata with its restricted-protocol prefix.
        if protocol == "grpc" and key == key.removeprefix(grpc_admin_header("")):
            key = grpc_admin_header(key)
        base += ["-H", f"{key}:{value}"]
    for stable, stability in ((True, settings.stability_percentage), (False, 1000)):
        cmd = [*base, "-s", str(stability)]
        logger.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.timeout_s)
        except subprocess.TimeoutExpired as e:
            raise PerfAnalyzerError(f"perf_analyzer timed out after {settings.timeout_s:.0f} s: {' '.join(cmd)}") from e
        if proc.returncode == 0 and out_csv.exists():
            return parse_csv(out_csv, model, protocol, shared_memory, batch_size, stable=stable)
        output = (proc.stdout + proc.stderr).strip()
        if "stable" not in output.lower():
            raise PerfAnalyzerError(f"perf_analyzer failed (exit {proc.returncode}) for {model} {protocol} "
                                    f"b{batch_size} c{concurrency}: {output[-1500:]}")
        logger.info("%s %s b%d c%d: no stable window within %d trials; measuring once more without the "
                    "stability check", model, protocol, batch_size, concurrency, settings.max_trials)
    raise PerfAnalyzerError(f"perf_analyzer gave no measurement for {model} {protocol} b{batch_size} c{concurrency}")


def sweep(
    http_url: str | None, grpc_url: str | None, models: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 16), concurrencies: Sequence[int] = (1, 4, 16),
    shared_memory: Sequence[str] = ("none",), binary: Path | None = None, workdir: Path | None = None,
    settings: PerfSettings | None = None, progress: bool = True, headers: dict[str, str] | None = None,
) -> list[PerfRow]:
    """Every combination; the ensemble runs at batch size 1 only (it serves single images)."""
    binary = binary or find_perf_analyzer()
    if binary is None:
        raise PerfAnalyzerError(f"perf_analyzer not found; {INSTALL_HINT}")
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="perf_analyzer.")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    names = served_names()
    models = list(models) if models else [names.classifier, names.ensemble]
    ensemble = names.ensemble
    input_data = write_input_data(workdir / "ensemble_input.json") if ensemble in models else None
    urls = {"http": http_url, "grpc": grpc_url}
    plan = [(m, p, shm, b, c) for m in models for p in ("http", "grpc") if urls[p]
            for shm in shared_memory for b in (batch_sizes if m != ensemble else (1,)) for c in concurrencies]
    rows: list[PerfRow] = []
    try:
        iterator: Iterable[tuple[str, str, str, int, int]] = plan
        if progress:
            from tqdm import tqdm

            iterator = tqdm(plan, desc="perf_analyzer", unit="run", file=sys.stderr)
        for model, protocol, shm, batch, conc in iterator:
            rows += run_perf_analyzer(binary, str(urls[protocol]), model, protocol, batch, conc, workdir,
                                      shared_memory=shm, input_data=input_data if model == ensemble else None,
                                      settings=settings, headers=headers)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def save_csv(rows: Sequence[PerfRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(PerfRow)] + ["requests_per_s"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), "requests_per_s": round(row.requests_per_s, 3)})
    return path


def plot(rows: Sequence[PerfRow], path: Path, title: str = "perf_analyzer: throughput vs p99 latency") -> Path:
    """One line per model/protocol/batch/shared-memory series, points along concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[PerfRow]] = {}
    for row in rows:
        series.setdefault(row.label, []).append(row)
    fig, ax = plt.subplots(figsize=(9, 6))
    for label, points in sorted(series.items()):
        points = sorted(points, key=lambda r: r.concurrency)
        xs = [p.inferences_per_s for p in points]
        ys = [p.p99_us / 1000 for p in points]
        ax.plot(xs, ys, marker="o", label=label)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"c{p.concurrency}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-url", help="HOST:PORT of a running server's HTTP endpoint")
    parser.add_argument("--grpc-url", help="HOST:PORT of a running server's gRPC endpoint")
    parser.add_argument("--models", default="", help="comma list (default: the spec's classifier and ensemble)")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--shared-memory", default="none", help="comma list of none,system")
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "perf")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from build_tools.errors import ToolkitError
    from loadtest.servers import build_repository, split_cpus, triton

    settings = PerfSettings(measurement_ms=args.measurement_ms)
    kwargs = dict(models=[m for m in args.models.split(",") if m] or None, batch_sizes=_ints(args.batch_sizes),
                  concurrencies=_ints(args.concurrency), shared_memory=args.shared_memory.split(","),
                  workdir=args.out / "raw", settings=settings)
    try:
        if args.http_url or args.grpc_url:
            rows = sweep(args.http_url, args.grpc_url, **kwargs)  # type: ignore[arg-type]
        else:
            cpus = split_cpus()
            repo = build_repository(args.out / "model_repository")
            with triton([repo], args.out / "tritonserver.log", cpus.server if cpus.pinned else None) as server:
                from loadtest.servers import affinity

                with affinity(cpus.client if cpus.pinned else None):
                    rows = sweep(server.http_url, server.grpc_url, **kwargs)  # type: ignore[arg-type]
    except ToolkitError as e:
        logger.error("%s", e)
        return 2
    save_csv(rows, args.out / "perf_analyzer.csv")
    plot(rows, args.out / "perf_analyzer.png")
    for row in rows:
        sys.stdout.write(f"{row.label:45s} c{row.concurrency:<3d} {row.inferences_per_s:9.1f} img/s  "
                         f"p99 {row.p99_us / 1000:7.2f} ms{'' if row.stable else '  (not stable)'}\n")
    logger.info("wrote %s and %s", args.out / "perf_analyzer.csv", args.out / "perf_analyzer.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
