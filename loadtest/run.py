"""A short headless Locust run against an embedded Triton started here: ``python -m loadtest.run``.

Builds the embedded repository from deploy.yaml into OUT/model_repository, starts the server through
the project's harness (on the server's CPUs when the machine has two or more; Locust gets the
others), runs ``locust -f loadtest/locustfile.py --headless`` against its HTTP and gRPC endpoints,
writes Locust's CSV and HTML reports to OUT (default build/loadtest) and exits with Locust's exit
code: 0 when the thresholds hold, 1 when they do not. ``--workers N`` runs Locust distributed (one
master, N workers on this machine). Names of user classes after the options pick users (default: all
four). Options not known here (e.g. ``--check-labels``) are passed on to Locust.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from build_tools.errors import ToolkitError
from loadtest.servers import DEFAULT_SPEC, ROOT, affinity, build_repository, split_cpus, triton

logger = logging.getLogger("loadtest.run")
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def locust_command(args: argparse.Namespace, http_url: str, grpc_url: str, out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--host", f"http://{http_url}", "--grpc-host", grpc_url,
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
           "--batch-size", str(args.batch_size),
           "--max-fail-ratio", str(args.max_fail_ratio),
           "--max-p95-ms", str(args.max_p95_ms), "--max-p99-ms", str(args.max_p99_ms),
           "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
           "--stop-timeout", "10", "--loglevel", "INFO"]
    if args.workers:
        cmd += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(args.master_port),
                "--expect-workers", str(args.workers), "--expect-workers-max-wait", "60"]
    return cmd + extra + list(args.user_classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest")
    parser.add_argument("--users", "-u", type=int, default=8)
    parser.add_argument("--spawn-rate", "-r", type=float, default=8)
    parser.add_argument("--run-time", "-t", default="20s")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-fail-ratio", type=float, default=0.01)
    parser.add_argument("--max-p95-ms", type=float, default=500.0)
    parser.add_argument("--max-p99-ms", type=float, default=1000.0)
    parser.add_argument("--workers", type=int, default=0, help="run Locust distributed with N local workers")
    parser.add_argument("--master-port", type=int, default=5557)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and Locust to CPU sets")
    parser.add_argument("user_classes", nargs="*", help="user classes to run (default: all)")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpus = split_cpus(pin=not args.no_pin)
    logger.info("CPUs: %s", cpus.describe())
    try:
        repo = build_repository(out / "model_repository", args.spec)
        with triton([repo], out / "tritonserver.log", cpus.server if cpus.pinned else None) as server:
            logger.info("tritonserver ready in %.1f s: http %s, grpc %s", server.startup_seconds,
                        server.http_url, server.grpc_url)
            workers: list[subprocess.Popen[bytes]] = []
            with affinity(cpus.client if cpus.pinned else None):
                try:
                    for i in range(args.workers):
                        log = open(out / f"locust-worker-{i}.log", "wb")  # noqa: SIM115 (closed with the process)
                        workers.append(subprocess.Popen(
                            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                             "--master-host", "127.0.0.1", "--master-port", str(args.master_port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
                    cmd = locust_command(args, server.http_url, server.grpc_url, out, extra)
                    logger.info("running: %s", " ".join(cmd))
                    started = time.monotonic()
                    code = subprocess.call(cmd, cwd=ROOT)
                    logger.info("locust finished in %.1f s with exit code %d", time.monotonic() - started, code)
                finally:
                    for w in workers:
                        try:
                            w.wait(15)
                        except subprocess.TimeoutExpired:
                            w.terminate()
                            w.wait(5)
    except ToolkitError as e:
        logger.error("%s", e)
        return 2
    logger.info("reports: %s, %s", out / "locust_stats.csv", out / "locust.html")
    return code


if __name__ == "__main__":
    sys.exit(main())
