"""Where a served request's time goes: ``python -m loadtest.profile``.

Starts the embedded Triton (the project's harness, server pinned as in the benchmark), drives
closed-loop load at one concurrency (``loadtest.loadgen``), and while it runs samples

* every Python-backend stub with py-spy (``py-spy record --nonblocking``: Python frames, sampled
  without pausing the stub; a C call shows as the Python frame that made it), summarised as the top
  frames by own samples per stub;
* tritonserver with ``perf record`` when ``perf`` is installed and allowed, summarised by symbol;
* the CPU time of each server process (``loadtest.procstat``), the split that says which process
  the rest of the profile is about.

Writes OUT/profile.md, OUT/profile.json and the raw samples (py-spy's ``raw`` format, perf.data).
The profilers run on the load generator's CPU(s), so they take no time from the server's.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from build_tools.errors import ToolkitError
from build_tools.served import SPEC_ENV
from loadtest import loadgen, procstat
from loadtest.common import spec_sample
from loadtest.servers import DEFAULT_SPEC, ROOT, affinity, build_repository, split_cpus, triton

logger = logging.getLogger("loadtest.profile")


def _children(pid: int) -> dict[int, str]:
    """pid -> name of every process under ``pid`` (the stubs are named by their model's file path)."""
    out: dict[int, str] = {}
    for child, proc in procstat.tree_cpu(pid).items():
        if child == pid:
            continue
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        model = next((Path(a.decode()).parent.parent.name for a in cmd if a.endswith(b"model.py")), None)
        out[child] = f"stub:{model}" if model else proc.name
    return out


def top_frames(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """py-spy raw output (``frame;frame;... count`` per line, root first): share of samples by leaf frame."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        counts[leaf] += int(count)
        total += int(count)
    return [(frame, c / total) for frame, c in counts.most_common(n)] if total else []


def perf_top(data: Path, n: int = 15) -> list[str]:
    proc = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,symbol",
                           "-g", "none", "--percent-limit", "1"], capture_output=True, text=True, timeout=120)
    lines = [" ".join(ln.split()) for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return [ln for ln in lines if ln[:1].isdigit() and "%" in ln][:n]


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    split = split_cpus()
    repo = build_repository(out / "repository", args.spec)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise ToolkitError("py-spy is not installed in this environment (pip install py-spy)")
    sample = spec_sample()
    report: dict[str, Any] = {"target": args.target, "protocol": args.protocol, "concurrency": args.concurrency,
                              "seconds": args.seconds, "loadavg_start": os.getloadavg()}
    with triton([repo], out / "tritonserver.log", split.server if split.pinned else None) as server:
        pid = server.process.pid if server.process else None
        if pid is None:
            raise ToolkitError("the harness started no server process to profile")
        make = loadgen.triton_http_target if args.protocol == "http" else loadgen.triton_grpc_target
        address = server.http_url if args.protocol == "http" else server.grpc_url
        target = make(address, sample, args.batch, ensemble=args.target == "ensemble")
        procs = _children(pid)
        result: dict[str, Any] = {}

        def load() -> None:
            with affinity(split.client if split.pinned else None):
                result["load"] = loadgen.run_load(target, args.concurrency, args.seconds + 2.0, warmup_s=1.0)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(1.5)  # past the warm-up
        before = procstat.tree_cpu(pid)
        profilers: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        with affinity(split.client if split.pinned else None):
            for child, name in procs.items():
                if not name.startswith("stub:"):
                    continue
                raw = out / f"pyspy_{name.removeprefix('stub:')}_{child}.txt"
                cmd = [pyspy, "record", "--pid", str(child), "--duration", str(int(args.seconds)), "--rate", "250",
                       "--nonblocking", "--format", "raw", "--output", str(raw)]
                profilers.append((name, raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            perf_data = out / "tritonserver.perf.data"
            if shutil.which("perf") and not args.no_perf:
                cmd = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(perf_data), "--",
                       "sleep", str(int(args.seconds))]
                profilers.append(("tritonserver", perf_data,
                                  subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        for name, _, proc in profilers:
            _, err = proc.communicate(timeout=args.seconds + 120)
            if proc.returncode != 0:
                logger.warning("%s profiler exited %d: %s", name, proc.returncode, err.decode()[-300:])
        spent = procstat.cpu_delta(before, procstat.tree_cpu(pid))
        thread.join(args.seconds + 30)
    load_result: loadgen.LoadResult = result["load"]
    report["load"] = load_result.to_dict()
    wall = float(args.seconds)
    report["server_cpu_cores"] = {k: round(v / wall, 3) for k, v in spent.items() if v > 0}
    report["server_cpu_ms_per_request"] = round(1000 * sum(spent.values()) / max(load_result.throughput_rps * wall, 1),
                                                3)
    report["stubs"] = {}
    for name, path, proc in profilers:
        if name == "tritonserver":
            report["tritonserver_perf"] = perf_top(path) if proc.returncode == 0 and path.exists() else []
        elif proc.returncode == 0 and path.exists():
            report["stubs"][f"{name} ({path.stem.rsplit('_', 1)[-1]})"] = [
                {"frame": f, "share": round(s, 3)} for f, s in top_frames(path)]
    report["loadavg_end"] = os.getloadavg()
    return report


def markdown(report: dict[str, Any], command: str) -> str:
    load = report["load"]
    lines = [f"# Profile: {load['target']} b{load['batch_size']} c{report['concurrency']}", "",
             f"`{command}`; load average {report['loadavg_start'][0]:.2f} at the start, "
             f"{report['loadavg_end'][0]:.2f} at the end.", "",
             f"{load['throughput_rps']:,.0f} req/s, p50 {load['latency_ms'].get('p50', 0):.2f} ms, p99 "
             f"{load['latency_ms'].get('p99', 0):.2f} ms; server CPU {report['server_cpu_ms_per_request']:.3f} ms "
             "per request.", "", "## Server CPU by process (cores)", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in report["server_cpu_cores"].items()]
    for name, frames in report["stubs"].items():
        lines += ["", f"## {name}: top frames by own samples (py-spy)", "", "| share | frame |", "|---|---|"]
        lines += [f"| {f['share'] * 100:.1f} % | `{f['frame']}` |" for f in frames]
    if report.get("tritonserver_perf"):
        lines += ["", "## tritonserver: perf, by shared object and symbol (self)", "", "```"]
        lines += report["tritonserver_perf"] + ["```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--target", choices=("classifier", "ensemble"), default="ensemble")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="profiled seconds")
    parser.add_argument("--no-perf", action="store_true", help="skip perf on tritonserver")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "profile")
    args = parser.parse_args(argv)
    os.environ[SPEC_ENV] = str(args.spec.resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("build_tools").setLevel(logging.WARNING)
    try:
        report = run(args)
    except ToolkitError as e:
        logger.error("profile failed: %s", e)
        return 2
    (args.out / "profile.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    command = "python -m loadtest.profile " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "profile.md").write_text(markdown(report, command.strip()))
    logger.info("wrote %s", args.out / "profile.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
