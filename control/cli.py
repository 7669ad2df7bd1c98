"""`triton-repo versions|stage|canary|promote|rollback|watch|finetune`: the lifecycle verbs, against a running
server (finetune trains a new version from labelled feedback, then stages and canaries it).

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


def _eval_set(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npz, got {text!r}")
    return name, Path(path)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from build_tools.errors import FinetuneError, RolloutError
    from build_tools.onnx_io import read_interface
    from control import feedback as fb
    from control.finetune import Finetuner, input_dims, report_table, write_report

    spec = load_spec(args.spec)
    finetuner = Finetuner(spec, args.model, progress=lambda line: sys.stderr.write(line + "\n"))
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("canary_percent", args.canary))
                 if v is not None}
    rules = finetuner.rules = finetuner.rules.model_copy(update=overrides)
    rollout = open_rollout(args, args.model)
    rollout.ensure_registered()
    champion = rollout.registry.champion(args.model)
    if champion is None:
        raise RolloutError(f"{args.model} has no champion in the registry: nothing to fine-tune from")
    champion_file = rollout.model_file(champion.version)
    dims = input_dims(champion_file)
    classes = read_interface(champion_file).outputs[0].dims[-1]
    num_classes = classes if classes > 0 else None
    if args.feedback:
        feedback = fb.from_file(Path(args.feedback), dims, num_classes)
    else:
        feedback = fb.from_database(connect(args.feedback_db or args.db), args.log_model or args.model, dims,
                                    rules.window, num_classes)
    if len(feedback) < rules.min_feedback:
        raise FinetuneError(f"{len(feedback)} labelled request(s) with their input in {feedback.source}; "
                            f"lifecycle.finetune.min_feedback is {rules.min_feedback}: wait for more labels")
    train, held_back = fb.split(feedback, rules.holdback, rules.seed)
    extra = {name: fb.from_file(path, dims, num_classes) for name, path in args.eval}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) / f"{args.model}-{stamp}"
    _print([f"fine-tuning {args.model} from version {champion.version} (champion): {len(train)} feedback samples "
            f"to train on, {len(held_back)} held back, from {feedback.source}; {rules.steps} steps, replay share "
            f"{rules.replay_share:g}"])
    result = finetuner.run(champion_file, train, held_back, out / "model.onnx", extra)
    paths = write_report(result, out, args.model, {"champion_version": champion.version,
                                                   "feedback_source": feedback.source})
    _print([*report_table(result),
            f"training: {result.training['seconds']:.1f} s; export check: max |diff| "
            f"{result.export_check['max_abs_diff']:.2g} vs PyTorch, {result.export_check['top1_disagreements']} "
            f"top-1 disagreements", f"report: {', '.join(str(p) for p in paths)}"])
    if args.no_stage:
        if not result.gate.passed:
            raise RolloutError(f"fine-tuned candidate rejected (not staged): {'; '.join(result.gate.reasons)} "
                               f"({result.gate.summary()})")
        _print([f"finetune gate: {result.gate.summary()}: passed", f"not staged (--no-stage): {result.candidate}"])
        return 0
    reason = args.reason or (f"fine-tuned from version {champion.version} on {len(train)} labelled requests "
                             f"({feedback.source})")
    record, step = rollout.stage(result.candidate, reason, prior_gate=result.gate)
    _print([*step.lines, f"staged {record.model} version {record.version} in {step.seconds:.2f} s"])
    if rules.canary_percent > 0:
        _print(list(rollout.canary(record.version, rules.canary_percent, f"canary of {reason}").lines))
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

    p = sub.add_parser("finetune", help="train a new version from labelled feedback + replay, gate it, stage it "
                       "and send it a canary share")
    p.add_argument("model")
    p.add_argument("--feedback", metavar="FILE.npz",
                   help="labelled feedback exported to a file (arrays images, uint8, and labels) instead of the "
                   "prediction log joined with its labels")
    p.add_argument("--feedback-db", help="database of the prediction log and labels (default: --db)")
    p.add_argument("--log-model", help="the model name the prediction log records carry (default: MODEL)")
    p.add_argument("--eval", action="append", default=[], type=_eval_set, metavar="NAME=FILE.npz",
                   help="another labelled set to report before/after (repeatable; not part of the gate)")
    p.add_argument("--out", default="build/finetune", help="folder for the candidate and its report")
    p.add_argument("--steps", type=int, help="training steps (default: lifecycle.finetune.steps)")
    p.add_argument("--seed", type=int, help="default: lifecycle.finetune.seed")
    p.add_argument("--canary", type=float, help="first traffic share in percent, 0 to stay staged "
                   "(default: lifecycle.finetune.canary_percent)")
    p.add_argument("--no-stage", action="store_true", help="train, check and judge only; no server needed")
    p.add_argument("--reason", help="recorded in the registry (default: what it was trained on)")
    _common(p)
    p.set_defaults(func=_explain_restricted(_cmd_finetune))

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
