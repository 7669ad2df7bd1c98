"""`triton-monitor serve|import-labels|status`: the drift monitor service, bulk label import, one report.

The prediction log and the labels are in --db (default $TDK_MONITORING_DATABASE_URL, the serving models'
log, else $TRITON_LIFECYCLE_DB, else the SQLite default of control/db.py); the roles of the versions
(champion, canary) come from the lifecycle registry, --registry-db (default $TRITON_LIFECYCLE_DB, else
--db). References (`reference.json`) are read from the model repositories
(--repository, default the spec's embedded output).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from build_tools.console import add_subparsers, make_parser, port_number, run
from build_tools.errors import SpecError
from build_tools.spec import DeploySpec, load_spec
from control.db import DEFAULT_URL, connect
from control.monitor import feedback
from control.monitor.drift import References
from control.monitor.service import Monitor, MonitorServer, alarms

logger = logging.getLogger(__name__)

# The prediction log's database: the same variable the serving models' log writer reads.
DB_ENV = "TDK_MONITORING_DATABASE_URL"
LIFECYCLE_DB_ENV = "TRITON_LIFECYCLE_DB"


def default_db() -> str:
    return os.environ.get(DB_ENV) or os.environ.get(LIFECYCLE_DB_ENV) or DEFAULT_URL


def num_classes(spec: DeploySpec) -> int:
    """Classes of the spec's classifier, from its labels file (the label range the endpoint accepts)."""
    from build_tools.served import classifier_names

    names = classifier_names(spec)
    if names.labels is None or not names.labels.is_file():
        raise SpecError(f"models.{names.classifier}.outputs", "a labels file is needed to check incoming labels")
    return sum(1 for line in names.labels.read_text().splitlines() if line.strip())


def _repositories(args: argparse.Namespace, spec: DeploySpec) -> list[Path]:
    if args.repository:
        return [Path(r) for r in args.repository]
    return [spec.resolve(spec.flavors["embedded"].output)]


def _monitor(args: argparse.Namespace) -> Monitor:
    spec = load_spec(args.spec)
    registry_url = args.registry_db or os.environ.get(LIFECYCLE_DB_ENV)
    registry = connect(registry_url) if registry_url and registry_url != args.db else None
    return Monitor(connect(args.db), References(_repositories(args, spec)), spec.monitoring.drift, num_classes(spec),
                   registry=registry)


def _cmd_serve(args: argparse.Namespace) -> int:
    monitor = _monitor(args)
    server = MonitorServer(monitor, args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        sys.stdout.write(f"triton-monitor: serving {server.url}/metrics, POST {server.url}/labels\n")
        sys.stdout.flush()
        stop.wait()
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    db = connect(args.db)
    feedback.migrate(db)
    result = feedback.import_files(db, [Path(p) for p in args.files], num_classes(spec))
    sys.stdout.write(f"imported {result.accepted} label(s); {result.duplicate} duplicate(s) dropped "
                     f"(the first label of an id wins)\n")
    return 0


def report_lines(monitor: Monitor) -> list[str]:
    state = monitor.update()
    spec = monitor.spec
    verdicts = alarms(state.snapshots, spec)
    lines = []
    for s in state.snapshots:
        worst = max(s.psi.items(), key=lambda kv: kv[1]) if s.psi else None
        acc = "-" if s.accuracy is None else (f"{s.accuracy.estimate:.4f} [{s.accuracy.low:.4f}, "
                                              f"{s.accuracy.high:.4f}] over {s.labelled}")
        failing = [c for c, bad in verdicts[(s.model, s.version)].items() if bad]
        lines.append(
            f"{s.model} v{s.version}{' (' + s.role + ')' if s.role else ''}: window {s.window}, "
            f"max PSI {'-' if worst is None else f'{worst[1]:.3f} ({worst[0]})'}, "
            f"chi2 p {'-' if s.chi2 is None else f'{s.chi2.p_value:.2g}'}, accuracy {acc}, "
            f"coverage {'-' if s.coverage is None else f'{s.coverage:.0%}'}; "
            f"alarms: {', '.join(failing) or 'none'}"
        )
    lab = state.labels
    lines.append(f"labels: {state.outcomes['accepted']} accepted, {state.outcomes['duplicate']} duplicate, "
                 f"{lab.late} late, {lab.pending} pending, {lab.unknown} unknown")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    for line in report_lines(_monitor(args)):
        sys.stdout.write(line + "\n")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default="deploy.yaml", help="thresholds from monitoring.drift, label range from the "
                   "classifier's labels file")
    p.add_argument("--db", default=default_db(),
                   help=f"database URL, sqlite:///PATH or postgresql://... (default: ${DB_ENV}, else "
                   f"${LIFECYCLE_DB_ENV}, else {DEFAULT_URL})")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("triton-monitor", "Drift and accuracy of the served model, from the prediction log.")
    sub = add_subparsers(parser)
    p = sub.add_parser("serve", help="the monitor service: /metrics, POST /labels, /health")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8010)
    p.add_argument("--repository", action="append",
                   help="a model repository holding each version's reference.json (repeatable; default: the "
                   "spec's embedded output)")
    _common(p)
    p.add_argument("--registry-db", help=f"the lifecycle registry's URL, for the versions' roles (default: "
                   f"${LIFECYCLE_DB_ENV}, else --db)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("import-labels", help="bulk label import: CSV (header request_id,label) or JSONL files")
    p.add_argument("files", nargs="+")
    _common(p)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("status", help="compute the figures once and print them")
    p.add_argument("--repository", action="append", help="as for serve")
    p.add_argument("--registry-db", help="as for serve")
    _common(p)
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), lambda args: args.func(args), argv)


if __name__ == "__main__":
    sys.exit(main())
