"""`triton-repo verify`: does a running server match the repository and spec it was built from?

It asks the server for its version (server metadata) and every model's state (repository index), reads
the lock files in the repository, and checks: server version against the spec (and the release table),
every plan's TensorRT version and release against the target, every model of the repository READY.
`compare_deployment` is the pure part; `fetch_server_state` talks to the server through triton_api.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from build_tools.errors import ClientError, PlanBuildError, SpecError, ToolkitError
from build_tools.spec import FLAVORS, TritonSpec, load_spec
from build_tools.tensorrt.lock import (
    TRITON_RELEASES,
    PlanLock,
    find_plans,
    lock_problems,
    parse_version,
    read_lock,
    spec_target_problems,
)
from triton_api import PROTOCOLS, TritonClient, parse_endpoint

logger = logging.getLogger(__name__)

TIMEOUT_S = 10.0


class VerifyFailedError(ToolkitError):
    """The server does not match the repository (the report on stdout lists every problem)."""


@dataclass
class VerifyReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, message: str) -> None:
        self.problems.append(message)
        self.lines.append(f"FAIL {message}")

    def good(self, message: str) -> None:
        self.lines.append(f"ok   {message}")

    def info(self, message: str) -> None:
        self.lines.append(f"info {message}")

    def render(self) -> str:
        verdict = "verify: OK" if self.ok else f"verify: FAILED ({len(self.problems)} problem(s))"
        return "\n".join([*self.lines, verdict]) + "\n"


def compare_deployment(
    server_version: str,
    index: list[dict[str, Any]],
    triton: TritonSpec,
    repository_models: list[str],
    locks: dict[str, PlanLock | PlanBuildError],
) -> VerifyReport:
    """Compare what the server reports with the spec and the repository's lock files.

    index: the repository index entries (name, version, state, reason); repository_models: the model
    folders on disk; locks: plan path (relative) -> its lock, or the error reading it.
    """
    report = VerifyReport()
    for problem in spec_target_problems(triton):
        report.fail(f"spec: {problem}")
    try:
        same = parse_version(server_version) == parse_version(triton.server_version)
    except PlanBuildError:
        same = False
    known = TRITON_RELEASES.get(triton.release)
    release_note = f"tritonserver:{triton.release}-py3" + ("" if known else " (release not in the table)")
    if same:
        report.good(f"server: Triton {server_version}, as the spec expects for {release_note}")
    else:
        report.fail(
            f"server: Triton {server_version or '<unknown>'} is running, the spec targets {triton.server_version} "
            f"({release_note}); serve the repository with that image or update the spec's triton section"
        )
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in index:
        by_name.setdefault(str(entry.get("name", "")), []).append(entry)
    for name in repository_models:
        entries = by_name.get(name)
        if not entries:
            report.fail(f"model {name}: in the repository but unknown to the server (is it serving this repository?)")
            continue
        for e in entries:
            version = e.get("version") or "?"
            state = e.get("state") or "<no state>"
            if state == "READY":
                report.good(f"model {name} v{version}: READY")
            else:
                reason = f" ({e['reason']})" if e.get("reason") else ""
                report.fail(f"model {name} v{version}: {state}{reason}; expected READY")
    extra = sorted(set(by_name) - set(repository_models))
    if extra:
        report.info(f"the server also serves {extra}, which are not in this repository")
    for plan, lock in sorted(locks.items()):
        if isinstance(lock, PlanBuildError):
            report.fail(f"plan {plan}: {lock}")
            continue
        problems = lock_problems(lock, triton, f"plan {plan}")
        for p in problems:
            report.fail(p)
        if not problems:
            report.good(
                f"plan {plan}: TensorRT {lock.tensorrt_version} for tritonserver:{lock.triton_release}-py3, built on "
                f"{lock.gpu_name} (sm {lock.compute_capability}); serve it on a GPU of that compute capability"
            )
    if not locks:
        report.info("no TensorRT plans in the repository")
    return report


def fetch_server_state(
    url: str, protocol: str, headers: dict[str, str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """(server version, repository index) from a running server; failures are ClientError.

    The repository index is a restricted API by default (deploy.yaml server.admin_api): `headers`
    carries the admin header ($TRITON_ADMIN_KEY in the CLI).
    """
    if protocol not in PROTOCOLS:
        raise ClientError(f"protocol {protocol!r} is not supported; expected one of {PROTOCOLS}")
    with TritonClient(url, protocol, timeout_s=TIMEOUT_S, headers=headers) as client:
        version = str(client.server_metadata().get("version", ""))
        try:
            return version, client.repository_index()
        except ClientError as e:
            if "restricted" not in str(e):
                raise
            raise ClientError(f"{e}; the repository API is restricted: set $TRITON_ADMIN_KEY to the server's "
                              f"admin key") from e


def repository_models(repository: Path) -> list[str]:
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


def repository_locks(repository: Path) -> dict[str, PlanLock | PlanBuildError]:
    locks: dict[str, PlanLock | PlanBuildError] = {}
    for plan in find_plans(repository):
        rel = plan.relative_to(repository).as_posix()
        try:
            locks[rel] = read_lock(plan)
        except PlanBuildError as e:
            locks[rel] = e
    return locks


def choose_repository(
    candidates: dict[str, Path], served: set[str]
) -> tuple[str, Path]:
    """The flavor whose repository the server serves: every model of it known to the server, the most
    such models winning (the ngc repository is the embedded one plus the TensorRT model). When none
    fits entirely, the one with the most known models, so the report names what is missing."""
    if not candidates:
        raise ClientError("no model repository to compare with; build one (`make build-repo`) or pass --repository")

    def score(item: tuple[str, Path]) -> tuple[bool, int]:
        models = set(repository_models(item[1]))
        return (bool(models) and models <= served, len(models & served))

    return max(candidates.items(), key=score)


def _cmd_verify(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise SpecError(str(spec_path), "spec file not found; verify compares the server with its triton section")
    spec = load_spec(spec_path)
    url = parse_endpoint(args.url, args.protocol)
    from build_tools.server import env_admin_headers

    headers = env_admin_headers(spec.server.admin_api.header, args.protocol)
    version, index = fetch_server_state(url, args.protocol, headers)
    if args.repository:
        repository, chosen = Path(args.repository), "given"
    else:
        flavors = [args.flavor] if args.flavor != "auto" else list(spec.flavors)
        candidates = {
            f: spec.resolve(spec.flavors[f].output) for f in flavors
            if f in spec.flavors and spec.resolve(spec.flavors[f].output).is_dir()
        }
        if args.flavor != "auto" and not candidates:
            raise ClientError(
                f"the {args.flavor} repository of {spec_path} does not exist; run `make build-repo` first"
            )
        chosen, repository = choose_repository(candidates, {str(e.get("name", "")) for e in index})
    if not repository.is_dir():
        raise ClientError(f"repository {repository} does not exist; expected the model repository the server serves")
    report = compare_deployment(
        version, index, spec.triton, repository_models(repository), repository_locks(repository)
    )
    flavor_note = "" if chosen == "given" else f" ({chosen} flavor)"
    sys.stdout.write(f"verify {args.protocol}://{url} against {repository}{flavor_note} and {spec_path}\n")
    sys.stdout.write(report.render())
    if not report.ok:
        raise VerifyFailedError(f"{len(report.problems)} problem(s), first: {report.problems[0]}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a running server: version, every model READY, plans locked to its TensorRT",
    )
    p.add_argument("--url", default="127.0.0.1:8000",
                   help="HOST:PORT of the server's HTTP (or, with --protocol grpc, gRPC) endpoint")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http", help="how to talk to the server")
    p.add_argument("--flavor", choices=("auto", *FLAVORS), default="auto",
                   help="which of the spec's repositories the server serves; auto: the one whose models it knows")
    p.add_argument("--repository", help="the model repository the server serves (overrides --flavor)")
    p.add_argument("--spec", default="deploy.yaml", help="the deployment spec")
    p.set_defaults(func=_cmd_verify)
