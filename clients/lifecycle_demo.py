"""`make lifecycle-demo`: a second version of the spec's classifier through the whole lifecycle on the embedded server.

Perturbs the trained classifier's weights (a stand-in for a retrained model with the same interface),
stages it (lint, accuracy gate, load), sends it 10% of the traffic, prints the per-version numbers from
the metrics endpoint, promotes it, then rolls back to the first version; a closed-loop load runs all
along and the request counts at the end show that none was lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def perturbed_copy(src: Path, dst: Path, scale: float, seed: int = 0) -> Path:
    """Copy an ONNX model with Gaussian noise (`scale` x each weight tensor's std) on its float weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < 2:
            continue
        noisy = arr + rng.normal(0.0, scale * float(arr.std() or 1.0), arr.shape).astype(np.float32)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _panel(metrics_url: str, model: str, router: str) -> list[str]:
    """The per-version numbers a dashboard panel shows: Triton's counters and p99, the router's counters."""
    import re
    import urllib.request

    from control.watcher import parse_metrics

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    triton = parse_metrics(text, model)
    routed: dict[int, float] = {}
    for m in re.finditer(r'^tdk_router_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        if labels.get("router") == router:
            routed[int(labels["version"])] = routed.get(int(labels["version"]), 0) + float(m[2])
    lines = [f"    {'version':>7} {'triton requests':>15} {'failures':>8} {'p99 ms':>7} {'router requests':>15}"]
    for v in sorted(set(triton) | set(routed)):
        s = triton.get(v)
        p99 = "-" if s is None or s.p99_us is None else f"{s.p99_us / 1000:.1f}"
        lines.append(f"    {v:>7} {0 if s is None else s.success + s.failure:>15,.0f} "
                     f"{0 if s is None else s.failure:>8,.0f} {p99:>7} {routed.get(v, 0):>15,.0f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import shutil
    import sys
    import time

    from build_tools.build import build_repositories
    from build_tools.errors import RolloutError, ToolkitError
    from build_tools.served import classifier_names
    from build_tools.server import ServerOptions, TritonServer
    from build_tools.spec import FlavorSpec, load_spec
    from clients.closed_loop import ClosedLoop
    from control.db import connect
    from control.registry import Registry
    from control.rollout import Rollout
    from triton_api import TritonClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="deploy.yaml")
    parser.add_argument("--workdir", type=Path, default=Path("build/lifecycle-demo"))
    parser.add_argument("--percent", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="load time at each step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        spec = load_spec(args.spec)
        names = classifier_names(spec)  # the classifier and the ensemble, named by the spec
        model_spec = spec.models[names.classifier]
        router = model_spec.router_name(names.classifier)
        if router is None:
            raise RolloutError(f"models.{names.classifier}.lifecycle is not set: the spec gives it no router")
        shutil.rmtree(args.workdir, ignore_errors=True)
        repo = args.workdir / "repository"
        build_repositories(spec.model_copy(update={"flavors": {"embedded": FlavorSpec(output=str(repo))}}),
                           ["embedded"])
        source = spec.resolve(model_spec.version_sources[max(model_spec.version_sources)])
        candidate = perturbed_copy(source, args.workdir / f"{source.stem}_v2.onnx", scale=0.02, seed=7)
        say(f"1. second version: {candidate} (the trained weights with 2% Gaussian noise)")
        # The spec's `server:` settings: the repository API is restricted to the admin key, which the
        # harness takes from $TRITON_ADMIN_KEY or draws at random; it hands it to the rollout's client.
        server = TritonServer(ServerOptions.from_spec(
            spec.server, model_repositories=[repo], model_control_explicit=True,
            log_file=args.workdir / "tritonserver.log", workdir=args.workdir / "server",
        ))
        with server:
            say(f"2. Triton in explicit model-control mode: http {server.http_url}, metrics {server.metrics_url}")
            client = TritonClient(server.http_url, timeout_s=300, headers=server.admin_headers)
            rollout = Rollout(spec, names.classifier, Registry(connect(f"sqlite:///{args.workdir / 'registry.db'}")),
                              client, repo, actor="lifecycle-demo")
            gate = model_spec.lifecycle.gate if model_spec.lifecycle else None
            if gate is None:
                raise RolloutError(f"models.{names.classifier}.lifecycle.gate is not set: the demo needs its data")
            with np.load(spec.resolve(gate.data)) as data:
                image = data[names.classifier_input][0]
            png = _png(image.reshape(image.shape[-2:]))
            with ClosedLoop(server.http_url, server.grpc_url, names, router, image, png) as load:
                say(f"3. closed-loop load: 4 clients (HTTP and gRPC) on {router} and {names.ensemble}")
                record, result = rollout.stage(candidate, "demo: perturbed weights")
                say("4. stage:")
                for line in result.lines:
                    say(f"     {line}")
                say(f"5. canary {args.percent:g}%:")
                for line in rollout.canary(record.version, args.percent, "demo canary").lines:
                    say(f"     {line}")
                time.sleep(args.seconds)
                say("   per-version numbers after the canary ran:")
                for line in _panel(server.metrics_url, names.classifier, router):
                    say(line)
                say("6. promote:")
                for line in rollout.promote(record.version, "demo: canary looked fine").lines:
                    say(f"     {line}")
                time.sleep(args.seconds / 2)
                say("7. rollback:")
                for line in rollout.rollback("demo: back to the first version").lines:
                    say(f"     {line}")
                time.sleep(args.seconds / 2)
            say("   per-version numbers at the end:")
            for line in _panel(server.metrics_url, names.classifier, router):
                say(line)
            problems = rollout.disagreements()
            client.close()
        counts = load.counts
        say(f"8. requests: {counts.ok:,} answered, {counts.failed} failed "
            f"({'zero lost' if counts.failed == 0 else 'LOST REQUESTS'}); registry, server and disk "
            f"{'agree' if not problems else 'disagree: ' + '; '.join(problems)}")
        for e in counts.errors[:5]:
            say(f"   error: {e}")
        return 0 if counts.failed == 0 and not problems else 1
    except ToolkitError as e:
        sys.stderr.write(f"lifecycle-demo: error: {str(e).splitlines()[0]}\n")
        return 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
