"""`triton-repo versions|stage|canary|promote|rollback|watch`: the lifecycle verbs, against a running server.

Each prints what it did and exits non-zero on refusal (a RolloutError, caught by triton-repo's main).
The registry lives in the database named by --db (default: $TRITON_LIFECYCLE_DB, else a SQLite file
in build/lifecycle/).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from build_tools.errors import ClientError, ToolkitError
from build_tools.server import ADMIN_KEY_ENV, env_admin_headers
from build_tools.spec import DeploySpec, load_spec
from control.db import DEFAULT_URL, connect
from control.registry import Registry
from control.rollout import Rollout
from triton_api import TritonClient

logger = logging.getLogger(__name__)

DB_ENV = "TRITON_LIFECYCLE_DB"
# A load with warmup can take a while on a busy server: the client must outwait it.
LOAD_TIMEOUT_S = 300.0


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def open_client(args: argparse.Namespace, spec: DeploySpec) -> TritonClient:
    """A client that sends the admin header (deploy.yaml server.admin_api, key from $TRITON_ADMIN_KEY):
    load, unload and the repository index are restricted APIs by default."""
    headers = env_admin_headers(spec.server.admin_api.header, args.protocol)
    return TritonClient(args.url, args.protocol, timeout_s=LOAD_TIMEOUT_S, headers=headers)


def _explain_restricted(func: Any) -> Any:
    """A refusal by the restricted repository API, with what to do about it."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ToolkitError as e:
            if "is restricted" not in str(e) or ADMIN_KEY_ENV in str(e):
                raise
            raise ClientError(f"{e}; the repository API is restricted: set ${ADMIN_KEY_ENV} to the server's "
                              f"admin key (a server that drew a random key takes no lifecycle commands)") from e

    return wrapper


def open_rollout(args: argparse.Namespace, model: str) -> Rollout:
    spec = load_spec(args.spec)
    repository = Path(args.repository) if args.repository else spec.resolve(spec.flavors["embedded"].output)
    registry = Registry(connect(args.db))
    client = open_client(args, spec)
    return Rollout(spec, model, registry, client, repository, actor=args.actor, drain_s=args.drain)


def _print(lines: tuple[str, ...] | list[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _cmd_versions(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    registry = Registry(connect(args.db))
    models = [args.model] if args.model else sorted(n for n, m in spec.models.items() if m.lifecycle is not None)
    client = open_client(args, spec)
    ready = {}
    try:
        for m in client.repository_index():
            if m.get("state") == "READY" and m.get("version"):
                ready.setdefault(m["name"], set()).add(int(m["version"]))
    finally:
        client.close()
    records = [r for m in models for r in registry.versions(m)]
    if args.json:
        out = []
        for r in records:
            d = r.as_dict()
            d["loaded"] = r.version in ready.get(r.model, set())
            d["history"] = [e.__dict__ for e in registry.history(r.model) if e.version == r.version]
            out.append(d)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    rows = [("model", "version", "state", "traffic", "loaded", "accuracy", "sha256", "added", "reason")]
    for r in records:
        acc = r.gate.get("accuracy")
        rows.append((r.model, str(r.version), r.state, f"{r.traffic_percent:g}%",
                     "yes" if r.version in ready.get(r.model, set()) else "no",
                     "-" if acc is None else f"{acc:.4f}", r.sha256[:12], r.added_at[:19], r.reason[:60]))
    if len(rows) == 1:
        _print(["no versions registered yet: the first lifecycle step registers the ones the router serves"])
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    _print(["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows])
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    rollout = open_rollout(args, args.model)
    record, result = rollout.stage(Path(args.source), args.reason)
    _print([*result.lines, f"staged {record.model} version {record.version} in {result.seconds:.2f} s"])
    return 0


def _cmd_canary(args: argparse.Namespace) -> int:
    result = open_rollout(args, args.model).canary(args.version, args.percent, args.reason)
    _print(result.lines)
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    result = open_rollout(args, args.model).promote(args.version, args.reason)
    _print(result.lines)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    result = open_rollout(args, args.model).rollback(args.reason)
    _print(result.lines)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from control.watcher import Watcher

    rollout = open_rollout(args, args.model)
    watcher = Watcher(rollout, args.metrics_url, interval_s=args.interval, monitor_url=args.monitor_url)
    verdict = watcher.run(max_seconds=args.max_seconds)
    _print([verdict or "watch: no rollback needed"])
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="127.0.0.1:8000", help="HOST:PORT of the server's HTTP (or gRPC) endpoint")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http",
                   help=f"the admin header goes with every call, its key from ${ADMIN_KEY_ENV}")
    p.add_argument("--spec", default="deploy.yaml")
    p.add_argument("--repository", help="the repository the server serves (default: the spec's embedded output)")
    p.add_argument("--db", default=os.environ.get(DB_ENV, DEFAULT_URL),
                   help=f"registry database URL: sqlite:///PATH or postgresql://... "
                   f"(default: ${DB_ENV} or {DEFAULT_URL})")
    p.add_argument("--actor", default=_default_actor(), help="who is acting, recorded in the history")
    p.add_argument("--drain", type=float, default=2.0,
                   help="seconds between moving traffic off a version and unloading it")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="the registry: every version, its state and traffic share")
    p.add_argument("model", nargs="?", help="one model (default: every model with a lifecycle)")
    p.add_argument("--json", action="store_true", help="JSON, with each version's history")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_versions))

    p = sub.add_parser("stage", help="lint, gate, register and load a new version (no traffic)")
    p.add_argument("model")
    p.add_argument("source", help="the new version's ONNX file")
    p.add_argument("--reason", default="staged from the command line")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_stage))

    p = sub.add_parser("canary", help="send a share of the traffic to a staged version")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--percent", type=float, required=True)
    p.add_argument("--reason", default="canary from the command line")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_canary))

    p = sub.add_parser("promote", help="make a staged or canary version the champion (100%%)")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--reason", default="promoted from the command line")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_promote))

    p = sub.add_parser("rollback", help="canary to 0%%, or back to the previous champion")
    p.add_argument("model")
    p.add_argument("--reason", default="rolled back from the command line")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_rollback))

    p = sub.add_parser("watch", help="roll the canary back automatically when it does worse than the champion")
    p.add_argument("model")
    p.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
    p.add_argument("--monitor-url", default=None,
                   help="the drift monitor's metrics (http://HOST:PORT/metrics of triton-monitor serve): also roll "
                   "back when, from labels, the canary is less accurate than the champion or its held-out accuracy")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long (default: run until Ctrl-C)")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_watch))
