"""Oversize requests, before and after the front proxy: Triton's memory (RSS) around the reporter's probes.

Issue 17's reporter sent 207 MB gRPC requests (Triton left at about 1 GB RSS, never released) and
200 MB HTTP bodies (buffered whole). Triton 2.51 has no request size limit; the kit's answer is the
front proxy (build_tools/proxy.py). This runs the same probes against two fresh embedded servers, one
called directly and one behind the proxy, and reports the server's RSS (tritonserver plus its stubs)
before, right after, and after a pause, with the answers the probes got.

    python -m loadtest.oversize [--rounds 2] [--out bench]

Writes bench/oversize.{md,json,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from build_tools.proxy import NginxProxy
from build_tools.served import classifier_names
from build_tools.server import ServerOptions, TritonServer
from build_tools.spec import load_spec
from loadtest.ab_cost import write_outputs

logger = logging.getLogger(__name__)

MIB = 1 << 20
HTTP_BYTES = 200 * MIB
GRPC_BYTES = 207 * MIB


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_rss(pid: int) -> tuple[int, int]:
    """(tritonserver's RSS, the RSS of its children: the Python-backend stubs)."""
    children = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    children += _rss(int(child))
    return _rss(pid), children


def _http_probe(url: str, model: str, tensor: str) -> str:
    header = json.dumps({"inputs": [{"name": tensor, "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": HTTP_BYTES}}]}).encode()
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=header + bytes(HTTP_BYTES),
                     headers={"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        return f"HTTP {r.status} {r.read()[:120].decode(errors='replace').strip()}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def _grpc_probe(url: str, model: str, tensor: str) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput(tensor, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[bytes(GRPC_BYTES)]], dtype=np.object_))
        client.infer(model, [inp], client_timeout=300)
        return "answered"
    except InferenceServerException as e:
        return f"{e.status()} {str(e.message())[:120]}"
    finally:
        client.close()


@contextlib.contextmanager
def _target(mode: str, repo: Path, work: Path) -> Iterator[tuple[TritonServer, str, str]]:
    spec = load_spec("deploy.yaml")
    options = ServerOptions.from_spec(spec.server, model_repositories=[repo], log_file=work / f"{mode}.log",
                                      workdir=work / mode, canary_interval_s=0)
    with TritonServer(options) as server:
        if mode == "direct":
            yield server, server.http_url, server.grpc_url
            return
        with NginxProxy(spec.server.proxy, list(spec.server.admin_api.restricted), server.http_url,
                        server.grpc_url) as proxy:
            yield server, proxy.http_url, proxy.grpc_url


def measure(mode: str, repo: Path, work: Path, rounds: int) -> dict:
    # The reporter's target: the spec's ensemble (raw image bytes in), named by the spec.
    names = classifier_names(load_spec("deploy.yaml"))
    model, tensor = names.ensemble, names.ensemble_input
    with _target(mode, repo, work) as (server, http_url, grpc_url):
        assert server.process is not None
        pid = server.process.pid
        before = tree_rss(pid)
        answers = []
        for i in range(rounds):
            logger.info("%s: round %d/%d, 200 MB over HTTP", mode, i + 1, rounds)
            answers.append(("http", _http_probe(http_url, model, tensor)))
            logger.info("%s: round %d/%d, 207 MB over gRPC", mode, i + 1, rounds)
            answers.append(("grpc", _grpc_probe(grpc_url, model, tensor)))
        right_after = tree_rss(pid)
        time.sleep(10)
        later = tree_rss(pid)
    return {"mode": mode, "rounds": rounds, "answers": answers,
            "rss_mib": {k: {"server": v[0] / MIB, "stubs": v[1] / MIB}
                        for k, v in (("before", before), ("after", right_after), ("after_10s", later))}}


def report(results: list[dict], out: Path) -> list[Path]:
    lines = ["# Oversize requests: Triton's memory before and after the front proxy", "",
             "`python -m loadtest.oversize` (embedded Triton 2.51, fresh server per row; "
             "RSS of tritonserver and of its Python-backend stubs, MiB).", "",
             "| path | rounds | server before | server after | server 10 s later | stubs before | stubs 10 s later |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["rss_mib"]
        lines.append(f"| {r['mode']} | {r['rounds']} | {m['before']['server']:.0f} | {m['after']['server']:.0f} | "
                     f"{m['after_10s']['server']:.0f} | {m['before']['stubs']:.0f} | {m['after_10s']['stubs']:.0f} |")
    lines += ["", "Answers:", ""]
    for r in results:
        for proto, answer in dict.fromkeys(r["answers"]):
            lines.append(f"* {r['mode']}, {proto}: {answer}")

    def plot(png: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["before", "after", "after_10s"]
        width = 0.35
        for i, r in enumerate(results):
            values = [r["rss_mib"][k]["server"] + r["rss_mib"][k]["stubs"] for k in labels]
            ax.bar(np.arange(len(labels)) + i * width, values, width, label=r["mode"])
        ax.set_xticks(np.arange(len(labels)) + width / 2, ["before", "right after", "10 s later"])
        ax.set_ylabel("RSS, tritonserver + stubs (MiB)")
        ax.set_title("200 MB HTTP bodies and 207 MB gRPC requests")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)

    # The JSON is the results list itself (as before the shared writer).
    return write_outputs(out, "oversize", results, "\n".join(lines), plot)


def main(argv: list[str] | None = None) -> int:
    from build_tools.build import build_repositories
    from build_tools.spec import FlavorSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="200 MB HTTP + 207 MB gRPC requests per server")
    p.add_argument("--out", default="bench", help="folder for oversize.{md,json,png}")
    p.add_argument("--work", default="build/oversize", help="repository, server logs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(args.work)
    spec = load_spec("deploy.yaml")
    repo = work / "repository"
    build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo.resolve()))}}),
                       ["embedded"])
    results = [measure(mode, repo, work, args.rounds) for mode in ("direct", "proxy")]
    for path in report(results, Path(args.out)):
        sys.stdout.write(f"{path}\n")
    sys.stdout.write((Path(args.out) / "oversize.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
