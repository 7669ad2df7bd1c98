"""`triton-repo`: build, check, serve and verify Triton model repositories from deploy.yaml.

Failures follow the console contract of build_tools/console.py: one line on stderr, exit code 1
(2 for usage), the traceback with --verbose.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from build_tools import verify
from build_tools.batching import stall_warnings
from build_tools.build import build_repositories
from build_tools.console import add_subparsers, make_parser, port_number, positive_float, run
from build_tools.errors import LintError, ToolkitError
from build_tools.k8s.cli import register as register_k8s
from build_tools.lint import lint_spec
from build_tools.repository import check_drift
from build_tools.server import ServerOptions, TritonServer, is_loopback
from build_tools.spec import FLAVORS, DeploySpec, ProxySpec, ServerSpec, load_spec
from control.cli import register_cli as register_lifecycle

logger = logging.getLogger("triton-repo")

# Loopback unless configured: a server reachable from other machines is an explicit choice.
DEFAULT_HOST = "127.0.0.1"
HOST_ENV = "TRITON_HOST"


def _warn(spec: DeploySpec) -> None:
    """Settings that build but serve badly: one line each on stderr, never a failure."""
    for warning in stall_warnings(spec):
        sys.stderr.write(f"triton-repo: warning: {warning}\n")


def _cmd_build(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    _warn(spec)
    if args.check:
        problems = check_drift(spec, "ngc")
        if problems:
            for p in problems:
                sys.stdout.write(f"drift: {p}\n")
            raise ToolkitError(
                f"{len(problems)} file(s) in {spec.flavors['ngc'].output} differ from what {args.spec} "
                f"generates; run `make build-repo` and commit the result"
            )
        sys.stdout.write(f"the ngc repository matches {args.spec}\n")
        return 0
    plans = build_repositories(spec, args.flavor or None)
    for flavor, plan in plans.items():
        sys.stdout.write(f"{flavor}: {plan.output} ({', '.join(m.name for m in plan.models)})\n")
        for note in plan.notes:
            sys.stdout.write(f"  note: {note}\n")
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    _warn(spec)
    findings, _ = lint_spec(spec)
    if findings:
        raise LintError(findings)
    sys.stdout.write(f"{args.spec}: no findings\n")
    return 0


def _front_proxy(args: argparse.Namespace, server: ServerSpec) -> ProxySpec | None:
    """The front proxy `serve` puts in front of Triton: by default, when nginx is installed."""
    from build_tools.proxy import NJS_MISSING, nginx_binary, njs_module

    if args.no_proxy:
        return None
    nginx = nginx_binary()
    if nginx is None:
        sys.stderr.write("triton-repo: warning: nginx is not installed (Debian packages nginx, "
                         "libnginx-mod-http-js): serving without the front proxy, so requests have no size limit "
                         "(docs/security.md); install it, or pass --no-proxy to serve without it knowingly\n")
        return None
    if server.proxy.check_json and njs_module(nginx) is None:
        sys.stderr.write(f"triton-repo: warning: {NJS_MISSING}\n")
    return server.proxy


def _cmd_serve(args: argparse.Namespace) -> int:
    repos = [Path(r) for r in args.model_repository]
    # The spec gives the repository (unless named) and the `server:` settings: restricted APIs, exit
    # timeout, the stub watchdog. A container serving a built repository may have no spec: defaults.
    spec = load_spec(args.spec) if not repos or Path(args.spec).is_file() else None
    if not repos and spec is not None:
        repos = [spec.resolve(spec.flavors["embedded"].output)]
    server_spec = spec.server if spec is not None else ServerSpec()
    proxy = _front_proxy(args, server_spec)
    options = ServerOptions.from_spec(
        server_spec,
        model_repositories=repos,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_file=Path(args.log_file) if args.log_file else None,
        # The prepared backends and the log stay in the project's build folder, next to the repository.
        workdir=Path(args.workdir) if args.workdir else Path("build") / "serve",
        startup_timeout_s=args.timeout,
        # explicit: models load at start (--load-model=*) and then only through the repository API,
        # which the lifecycle commands (stage, canary, promote, rollback) and the stub watchdog use.
        model_control_explicit=args.model_control == "explicit",
        health_port=args.health_port,
        extra_args=[*shlex.split(os.environ.get("TRITON_EXTRA_ARGS", "")), *args.server_arg],
        front_proxy=proxy,
        triton_http_port=args.triton_http_port,
        triton_grpc_port=args.triton_grpc_port,
    )
    stop = threading.Event()
    # Ctrl-C and `docker stop` both end the foreground server cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with TritonServer(options) as server:
        models = ", ".join(f"{m['name']} v{m.get('version', '?')}" for m in server.model_index())
        key = "$TRITON_ADMIN_KEY" if os.environ.get("TRITON_ADMIN_KEY") else "<random key>"
        restricted = (f"restricted APIs ({', '.join(options.restricted_apis) or 'none'}) need the header "
                      f"{options.admin_header}: {key}")
        if server.proxy is not None:
            where = ("through the proxy too" if is_loopback(args.host) else
                     f"on Triton's own loopback ports only (http {server.http_url}, grpc {server.grpc_url})")
            checks = ", malformed JSON 400" if server.proxy.checks_json else ""
            front = (
                f"  HTTP    http://{server.front_http_url}   (front proxy, nginx: requests up to "
                f"{server_spec.proxy.max_request_mib} MiB{checks})\n"
                f"  gRPC    {server.front_grpc_url}\n"
                f"  Triton  http {server.http_url}, grpc {server.grpc_url} (loopback only, behind the proxy)\n"
                f"  proxy log {server.proxy.log_path}\n"
            )
            restricted += f", {where}"
        else:
            front = f"  HTTP    http://{server.http_url}   (no front proxy)\n  gRPC    {server.grpc_url}\n"
        sys.stdout.write(
            f"Triton is ready ({server.startup_seconds:.1f} s): {models}\n"
            f"{front}"
            f"  metrics {server.metrics_url}\n"
            f"  health  {server.health_url} (stub watchdog: 503 while a model has a dead stub)\n"
            f"  log     {server.log_path}\n"
            f"  {restricted}\n"
            "Press Ctrl-C to stop.\n"
        )
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not server.is_alive():
                raise ToolkitError(f"tritonserver exited unexpectedly; log tail:\n{server.log_tail()}")
            if server.proxy is not None and not server.proxy.is_alive():
                raise ToolkitError(f"the front proxy (nginx) exited unexpectedly; see {server.proxy.log_path}")
    return 0


def _cmd_watchdog(args: argparse.Namespace) -> int:
    """The stub watchdog beside a server it did not start (the GPU stack's sidecar, Kubernetes)."""
    from build_tools.healer import Healer, HealthEndpoint, find_server_pid, http_canary, http_reload
    from build_tools.server import env_admin_headers
    from triton_api import TritonClient

    spec = load_spec(args.spec) if Path(args.spec).is_file() else None
    healer_spec = (spec.server if spec is not None else ServerSpec()).healer
    header = (spec.server if spec is not None else ServerSpec()).admin_api.header
    headers = env_admin_headers(header, "http")
    if headers is None:
        raise ToolkitError("set $TRITON_ADMIN_KEY: the watchdog reloads models through the restricted "
                           "repository API")
    repos = [Path(r) for r in args.model_repository]

    def restart() -> None:  # never called: reload is always given here
        logger.error("the watchdog cannot restart a server it did not start")

    server_pid = (lambda: args.server_pid) if args.server_pid else find_server_pid
    healer = Healer(
        server_pid, http_reload(args.url, headers), restart,
        interval_s=healer_spec.interval_s, max_heals_per_10min=healer_spec.max_heals_per_10min,
        canary=http_canary(args.url, repos, healer_spec.canary_timeout_s),
        canary_interval_s=healer_spec.canary_interval_s or 5.0, canary_misses=healer_spec.canary_misses,
    )
    def ready() -> bool:  # a client per call: the health endpoint answers from several threads
        with TritonClient(args.url, "http", timeout_s=2.0) as client:
            return client.is_ready()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not ready():  # the server may still be loading its models
        if stop.wait(2.0):
            return 0
    with TritonClient(args.url, "http", timeout_s=10.0, headers=headers) as client:
        models = [m["name"] for m in client.repository_index() if m.get("state") == "READY"]
    healer.watch(models)
    healer.start()
    health = HealthEndpoint(healer, ready, args.host, args.health_port)
    sys.stdout.write(f"watchdog on {args.url}: models {sorted(healer.models)}, server pid "
                     f"{server_pid() or 'not visible (canaries only)'}; health "
                     f"http://{args.host}:{health.port}/health\n")
    sys.stdout.flush()
    stop.wait()
    health.close()
    healer.stop()
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    """Write the front proxy's nginx configuration from the spec, check it, and run nginx in its place."""
    from build_tools.proxy import (
        NJS_MISSING,
        ProxyAddresses,
        check_conf,
        nginx_binary,
        nginx_conf,
        njs_module,
        write_conf,
    )

    server = load_spec(args.spec).server if Path(args.spec).is_file() else ServerSpec()
    where = ProxyAddresses(args.listen_http, args.listen_grpc, args.upstream_http, args.upstream_grpc)
    state = Path(args.state_dir)
    nginx = nginx_binary()
    module = njs_module(nginx) if server.proxy.check_json and nginx is not None else None
    conf = write_conf(nginx_conf(server.proxy, list(server.admin_api.restricted), where, state.resolve(),
                                 njs_module=module), state)
    if args.write_only:
        sys.stdout.write(f"{conf}\n")
        return 0
    if nginx is None:
        raise ToolkitError("nginx is not installed (Debian package nginx)")
    if server.proxy.check_json and module is None:
        sys.stderr.write(f"triton-repo: warning: {NJS_MISSING}\n")
    check_conf(nginx, conf)
    sys.stdout.write(f"front proxy: http {args.listen_http} -> {args.upstream_http}, grpc {args.listen_grpc} -> "
                     f"{args.upstream_grpc}, requests up to {server.proxy.max_request_mib} MiB\n")
    sys.stdout.flush()
    os.execv(nginx, [nginx, "-e", "stderr", "-c", str(conf.resolve()), "-p", str(state.resolve())])
    return 0  # not reached


def _cmd_tune(args: argparse.Namespace) -> int:
    # The tuner drives the load generator; imported here so the other commands do not need it.
    from loadtest import tune

    spec_path = Path(args.spec)
    result = tune.tune(spec_path, args.model, args.concurrency, args.p99_ms, args.duration, Path(args.out),
                       progress=tune.main_progress)
    sys.stdout.write(f"chosen for {args.model}: {result.chosen.label()}\n  {result.reason}\n"
                     f"  report: {Path(args.out) / f'tune_{args.model}.md'}\n")
    if args.write:
        tune.write_back(spec_path, args.model, result.chosen)
        sys.stdout.write(f"  written to {spec_path} (comments kept); run `make build-repo`\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("triton-repo", __doc__.splitlines()[0])
    sub = add_subparsers(parser)

    p = sub.add_parser("build-repo", help="lint the spec and write the model repositories")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec")
    p.add_argument("--flavor", action="append", choices=FLAVORS, help="only this flavor (repeatable)")
    p.add_argument("--check", action="store_true", help="fail if the ngc repository on disk drifted from the spec")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("lint", help="lint the spec and its models without writing anything")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec")
    p.set_defaults(func=_cmd_lint)

    p = sub.add_parser("serve", help="serve the embedded repository in the foreground until Ctrl-C")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec")
    p.add_argument("--model-repository", action="append", default=[],
                   help="serve this folder instead of the spec's embedded repository (repeatable)")
    p.add_argument(
        "--host", default=os.environ.get(HOST_ENV) or DEFAULT_HOST,
        help=f"address to bind (${HOST_ENV} when set; 0.0.0.0 to publish a container's ports)",
    )
    p.add_argument("--http-port", type=port_number, default=8000, help="HTTP endpoint port (0: pick a free one)")
    p.add_argument("--grpc-port", type=port_number, default=8001, help="gRPC endpoint port (0: pick a free one)")
    p.add_argument("--metrics-port", type=port_number, default=8002, help="metrics port (0: pick a free one)")
    p.add_argument("--health-port", type=port_number, default=8003, help="the stub watchdog's /health and /metrics")
    p.add_argument(
        "--model-control", choices=("none", "explicit"), default="none",
        help="explicit: load/unload through the repository API (needed by the lifecycle commands), and a "
        "dead stub is healed by reloading its model; none: by restarting the server",
    )
    p.add_argument("--no-proxy", action="store_true",
                   help="no front proxy: Triton itself on --host and the HTTP/gRPC ports (by default nginx takes "
                   "them when installed: request size limits, malformed JSON answered 400; docs/security.md)")
    p.add_argument("--triton-http-port", type=port_number, default=0,
                   help="Triton's own HTTP port on 127.0.0.1 behind the front proxy (0: a free one)")
    p.add_argument("--triton-grpc-port", type=port_number, default=0,
                   help="Triton's own gRPC port on 127.0.0.1 behind the front proxy (0: a free one)")
    p.add_argument("--log-file", help="server log (default: in the work folder)")
    p.add_argument("--workdir", help="folder for the prepared backends and the log (default: build/serve)")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds to wait for readiness")
    p.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG",
        help="extra tritonserver flag, e.g. --server-arg=--log-verbose=1 (repeatable; also $TRITON_EXTRA_ARGS)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("watchdog", help="heal hung or dead stubs of a server this command did not start "
                       "(canary inferences; stub processes too where the pid namespace is shared)")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec (server.healer settings)")
    p.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP endpoint, host:port")
    p.add_argument("--model-repository", action="append", default=[],
                   help="the served repository, for the models' warmup samples (repeatable)")
    p.add_argument("--host", default="0.0.0.0", help="address of the /health and /metrics endpoint")
    p.add_argument("--health-port", type=port_number, default=8003, help="the watchdog's /health and /metrics")
    p.add_argument("--server-pid", type=int, help="tritonserver's pid (default: the one tritonserver process "
                   "visible here, as in a container sharing the server's pid namespace)")
    p.set_defaults(func=_cmd_watchdog)

    p = sub.add_parser("proxy", help="run the front proxy (nginx: request size limits, restricted APIs refused) "
                       "in front of a server")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec (server.proxy, server.admin_api)")
    p.add_argument("--listen-http", default="127.0.0.1:8080", help="host:port the proxy serves HTTP on")
    p.add_argument("--listen-grpc", default="127.0.0.1:8081", help="host:port the proxy serves gRPC on")
    p.add_argument("--upstream-http", default="127.0.0.1:8000", help="the server's HTTP endpoint")
    p.add_argument("--upstream-grpc", default="127.0.0.1:8001", help="the server's gRPC endpoint")
    p.add_argument("--state-dir", default="build/proxy", help="nginx's configuration, pid file and temp folders")
    p.add_argument("--write-only", action="store_true", help="write the configuration and exit")
    p.set_defaults(func=_cmd_proxy)

    p = sub.add_parser("tune", help="search a model's serving settings against a latency target on the real server")
    p.add_argument("--spec", default="deploy.yaml")
    p.add_argument("--model", required=True, help="a model of the spec (an ensemble's steps are tuned one by one)")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (gRPC)")
    p.add_argument("--p99-ms", type=float, help="target: highest throughput with p99 at most this (default: "
                   "highest throughput with no request over 250 ms)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per setting")
    p.add_argument("--out", default="build/tune", help="report folder (Markdown, JSON, PNG)")
    p.add_argument("--write", action="store_true", help="write the chosen settings back into the spec")
    p.set_defaults(func=_cmd_tune)

    verify.register(sub)
    # The lifecycle verbs (versions, stage, canary, promote, rollback, watch) act on a running server.
    register_lifecycle(sub)
    # Kubernetes manifests and the capacity plan (docs/kubernetes.md).
    register_k8s(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), lambda args: args.func(args), argv)


if __name__ == "__main__":
    sys.exit(main())
