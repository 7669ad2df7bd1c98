"""`triton-repo k8s` (manifests from the spec, validated, written or drift-checked) and
`triton-repo capacity` (replicas for a request rate, and the autoscaler's response to a load ramp)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from build_tools.console import positive_float
from build_tools.errors import ToolkitError
from build_tools.served import load_classifier_names
from build_tools.spec import FLAVORS, load_spec


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _cmd_k8s(args: argparse.Namespace) -> int:
    from build_tools.k8s.manifests import K8sOptions
    from build_tools.k8s.writer import drift, generate, write

    if args.min_replicas > args.max_replicas:
        raise ToolkitError(f"--min-replicas {args.min_replicas} is above --max-replicas {args.max_replicas}")
    spec = load_spec(args.spec)
    flavors = args.flavor or list(FLAVORS)
    opts = K8sOptions(
        namespace=args.namespace, image=args.image, triton_image=args.triton_image,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        queue_target_us=round(args.queue_target_ms * 1000), pending_target=args.pending_target,
        monitoring_namespace=args.monitoring_namespace, prometheus_url=args.prometheus_url,
        storage_class=args.storage_class,
    )
    files = generate(spec, Path(args.spec).name, flavors, opts)
    out = Path(args.out)
    if args.check:
        problems = drift(files, out, flavors)
        for p in problems:
            sys.stdout.write(f"drift: {p}\n")
        if problems:
            raise ToolkitError(f"{len(problems)} manifest file(s) in {out} differ from what {args.spec} generates; "
                               f"run `triton-repo k8s` and commit the result")
        sys.stdout.write(f"{len(files)} manifest files in {out} match {args.spec} and validate\n")
        return 0
    written = write(files, out)
    sys.stdout.write(f"{len(files)} manifest files validated (Kubernetes schemas and the CRDs in k8s/schemas), "
                     f"{len(written)} written to {out}\n")
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    from build_tools.k8s import capacity

    target = args.target or capacity.default_target(load_classifier_names(args.spec).ensemble)
    measured = capacity.per_replica_throughput(Path(args.bench), target, args.slo_ms)
    plan = capacity.plan(measured, args.rate, args.headroom)
    sys.stdout.write(capacity.describe_plan(plan) + "\n")
    ramp = capacity.Ramp(start_rps=args.ramp_from if args.ramp_from is not None else args.rate * 0.1,
                         end_rps=args.rate, ramp_s=args.ramp_s, hold_s=args.hold_s)
    sim_opts: dict[str, Any] = {
        "pod_start_s": args.pod_start_s, "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
        "queue_target_us": args.queue_target_ms * 1000, "pending_target": args.pending_target,
    }
    result = capacity.simulate(measured, ramp, capacity.SimOptions(**sim_opts))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = capacity.plot(result, plan, out / "capacity.png")
    (out / "capacity.json").write_text(capacity.to_json(plan, result))
    sys.stdout.write(capacity.describe_simulation(result) + f"\n  plot: {png}\n  data: {out / 'capacity.json'}\n")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("k8s", help="Kubernetes manifests from the spec, validated offline (docs/kubernetes.md)")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec")
    p.add_argument("--flavor", action="append", choices=FLAVORS, help="only this flavor (repeatable; default both)")
    p.add_argument("--out", default="k8s", help="folder; each flavor goes to <out>/<flavor>/")
    p.add_argument("--check", action="store_true",
                   help="fail when the files in --out differ from what the spec generates")
    p.add_argument("--namespace", default="triton")
    p.add_argument("--image", default="triton-deploy-kit-cpu:latest",
                   help="the project's CPU image (compose/Dockerfile.cpu) as the cluster pulls it")
    p.add_argument("--triton-image", help="the ngc flavor's server image (default: tritonserver:<triton.release>-py3)")
    p.add_argument("--min-replicas", type=_positive_int, default=2)
    p.add_argument("--max-replicas", type=_positive_int, default=10)
    p.add_argument("--queue-target-ms", type=positive_float, default=5.0,
                   help="average queue time per request the autoscaler holds each pod at")
    p.add_argument("--pending-target", type=_positive_int, default=4, help="pending requests per pod")
    p.add_argument("--monitoring-namespace", default="monitoring", help="where Prometheus and its adapter run")
    p.add_argument("--prometheus-url", default="http://prometheus-operated.monitoring.svc:9090",
                   help="Prometheus as KEDA reaches it")
    p.add_argument("--storage-class", help="a ReadWriteMany storage class for the model repository volume")
    p.set_defaults(func=_cmd_k8s)

    p = sub.add_parser("capacity", help="replicas for a request rate, and a simulated autoscaler on a load ramp")
    p.add_argument("--rate", type=positive_float, required=True, help="target request rate (requests/s)")
    p.add_argument("--bench", default="bench/results.json", help="benchmark results (make bench)")
    p.add_argument("--spec", help="the spec naming the served ensemble (default: deploy.yaml)")
    p.add_argument("--target", help="the benchmark's client/model whose single-image throughput is the per-replica "
                   "figure (default: triton-http/<the spec's classification ensemble>)")
    p.add_argument("--slo-ms", type=positive_float, default=100.0, help="p99 latency SLO (the alert rules' 100 ms)")
    p.add_argument("--headroom", type=positive_float, default=0.7,
                   help="plan each replica at this fraction of its throughput at the SLO")
    p.add_argument("--ramp-from", type=positive_float, help="ramp start (requests/s; default 10 %% of --rate)")
    p.add_argument("--ramp-s", type=positive_float, default=300.0, help="ramp duration (s)")
    p.add_argument("--hold-s", type=positive_float, default=600.0, help="time at --rate after the ramp (s)")
    p.add_argument("--pod-start-s", type=positive_float, default=60.0,
                   help="scheduling, image start and model load until a new pod is ready (s)")
    p.add_argument("--min-replicas", type=_positive_int, default=2)
    p.add_argument("--max-replicas", type=_positive_int, default=50)
    p.add_argument("--queue-target-ms", type=positive_float, default=5.0, help="as `triton-repo k8s`")
    p.add_argument("--pending-target", type=_positive_int, default=4, help="as `triton-repo k8s`")
    p.add_argument("--out", default="build/capacity", help="folder for capacity.png and capacity.json")
    p.set_defaults(func=_cmd_capacity)
