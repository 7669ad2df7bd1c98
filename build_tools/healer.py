"""The stub watchdog: a dead Python-backend stub is found, healed, logged, counted and shown.

Every model of the embedded server runs in `triton_python_backend_stub` processes, one per instance,
children of tritonserver. When one dies (OOM killer, a crash, `kill -9`), Triton 2.51 never restarts
it: every request routed to that instance fails with "Stub process ... is not healthy", the model
stays READY and /v2/health/ready stays 200. The watchdog reads the stubs from /proc (which model and
instance each serves, from its command line) and, when an instance's stub is gone or a zombie:

* logs it, marks the model unhealthy (`/health` answers 503 and names it),
* heals it: in explicit model-control mode it reloads the model through Triton's repository API
  (with the admin header: that API is restricted); in the other modes the only way is to restart the
  server, which it asks the harness to do,
* counts it: `tdk_healer_stub_heals_total{model}` and `tdk_healer_model_unhealthy{model}` on its own
  `/metrics` (Prometheus scrapes it beside Triton; alerts.yml has the rules).

A stub can also hang: alive in /proc, never answering (a deadlock, SIGSTOP). So the watchdog also
sends each model a canary inference every `canary_interval_s` (its own warmup sample, else a zero
tensor) with a deadline; a model that misses `canary_misses` canaries in a row (no answer within
`canary_timeout_s`, or Triton's "Stub process ... is not healthy") is healed the same way, and the
misses are counted (`tdk_healer_canary_failures_total{model}`).

It also keeps the stubs' shared-memory regions (`/dev/shm/<region>`) private to the server's user
(mode 0600, Triton creates them 0644) and remembers their names, so the harness can remove regions a
dead stub left behind after the server stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from build_tools.folder_lock import folder_lock

logger = logging.getLogger(__name__)

STUB_COMM = "triton_python_b"  # /proc/<pid>/comm keeps 15 characters of triton_python_backend_stub
SHM_DIR = Path("/dev/shm")
HEAL_WINDOW_S = 600.0
STOPPED_STATES = ("T", "t")
LEFTOVER_GRACE_S = 5.0  # after a reload, how long a replaced stub may take to end before it is killed


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str
    shm_region: str  # the name under /dev/shm, without the leading slash
    state: str = "R"  # /proc/<pid>/stat's state: T (stopped) and t (traced) never answer


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def parse_stub_cmdline(argv: list[str]) -> tuple[str, str, str] | None:
    """(model, instance, shm region) from a stub's argv, or None when it is not a model stub.

    The python backend starts `stub <repo>/<model>/<version>/model.py <shm region> <default size>
    <growth size> <parent pid> <python lib> <ipc handle> <instance name> <runtime dir>`.
    """
    if len(argv) < 9 or not argv[0].endswith("triton_python_backend_stub"):
        return None
    model_file = Path(argv[1])
    model = model_file.parent.parent.name
    return model, argv[8], argv[2].lstrip("/")


def _children(pid: int) -> list[Path] | None:
    """/proc entries of pid's children, from /proc/<pid>/task/*/children (None where unsupported)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found: list[Path] = []
    for task in tasks:
        raw = _read(task / "children")
        if raw is None:
            return None if not (task / "children").exists() else found
        found += [Path("/proc") / c.decode() for c in raw.split()]
    return found


def find_server_pid() -> int | None:
    """The pid of a `tritonserver` process visible here (the watchdog sidecar shares the server's pid
    namespace), or None."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (_read(entry / "comm") or b"").strip() == b"tritonserver":
            return int(entry.name)
    return None


def list_stubs(server_pid: int) -> list[Stub]:
    """The live (not zombie) stubs whose parent is server_pid."""
    stubs = []
    # The children files spare a scan of every process on a busy host twice a second.
    children = _children(server_pid)
    entries = children if children is not None else [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    for entry in entries:
        stat = _read(entry / "stat")
        if stat is None:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        head, _, rest = stat.decode(errors="replace").rpartition(")")
        fields = rest.split()
        if len(fields) < 2 or int(fields[1]) != server_pid or fields[0] in ("Z", "X"):
            continue
        if not head.split("(", 1)[-1].startswith(STUB_COMM):
            continue
        raw = _read(entry / "cmdline")
        if raw is None:
            continue
        parsed = parse_stub_cmdline([a.decode(errors="replace") for a in raw.split(b"\0") if a])
        if parsed is not None:
            stubs.append(Stub(int(entry.name), *parsed, state=fields[0]))
    return stubs


@dataclass
class ModelHealth:
    expected: set[str] = field(default_factory=set)  # instance names seen alive after a (re)load
    heals: int = 0
    failed_heals: int = 0
    unhealthy_since: float | None = None
    recent: deque[float] = field(default_factory=deque)  # heal times, for the rate limit
    last_problem: str = ""
    gave_up: bool = False  # the heal limit was hit (reported once per outage)
    canary_failures: int = 0  # canaries unanswered in time, ever (the counter)
    canary_missed: int = 0  # in a row, since the last answer
    canary_seconds: float = 0.0  # the last canary's round trip


class Healer:
    """Watches one server's stubs from a thread; heals through `reload(model)` or `restart()`.

    `reload` returns True when the model is back; `restart` restarts the whole server (the harness
    passes both; `reload` is None outside explicit model-control mode).
    """

    def __init__(
        self,
        server_pid: Callable[[], int | None],
        reload: Callable[[str], bool] | None,
        restart: Callable[[], None],
        interval_s: float = 0.5,
        max_heals_per_10min: int = 10,
        canary: Callable[[str], str | None] | None = None,
        canary_interval_s: float = 10.0,
        canary_misses: int = 2,
    ) -> None:
        self._server_pid = server_pid
        self._reload = reload
        self._restart = restart
        self.interval_s = interval_s
        self.max_heals = max_heals_per_10min
        # canary(model) -> None when the model answered in time, else what went wrong.
        self._canary = canary
        self.canary_interval_s = canary_interval_s
        self.canary_misses = canary_misses
        # Stopped stubs (state T in /proc) are healed from the process watch; the chaos test of the
        # canaries turns this off to show that they find a hung stub on their own.
        self.watch_stopped = True
        self._heal_lock = threading.Lock()  # the process watch and the canaries heal one at a time
        self._canary_thread: threading.Thread | None = None
        self.models: dict[str, ModelHealth] = {}
        self.shm_regions: set[str] = set()
        self.server_restarts = 0
        self.events: deque[str] = deque(maxlen=200)  # what was logged, for the CLI and the tests
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state -----------------------------------------------------------------------------------
    def baseline(self) -> None:
        """Record the stubs alive now as what each model should have (after the server starts)."""
        pid = self._server_pid()
        stubs = list_stubs(pid) if pid else []
        with self._lock:
            seen: dict[str, set[str]] = {}
            for s in stubs:
                seen.setdefault(s.model, set()).add(s.instance)
            for model, instances in seen.items():
                self.models.setdefault(model, ModelHealth()).expected = instances
            self._guard_regions(stubs)
        logger.debug("healer baseline: %s", dict(Counter(s.model for s in stubs)))

    def watch(self, models: list[str]) -> None:
        """Canary these models too (e.g. ONNX models, which have no stub to watch in /proc)."""
        with self._lock:
            for model in models:
                self.models.setdefault(model, ModelHealth())

    def _guard_regions(self, stubs: list[Stub]) -> None:
        for s in stubs:
            if s.shm_region not in self.shm_regions:
                self.shm_regions.add(s.shm_region)
            # Triton creates the regions 0644: any local user could read the tensors.
            with contextlib.suppress(OSError):
                path = SHM_DIR / s.shm_region
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)

    def unhealthy(self) -> dict[str, str]:
        with self._lock:
            return {m: h.last_problem for m, h in self.models.items() if h.unhealthy_since is not None}

    def healthy(self) -> bool:
        return not self.unhealthy()

    def heals(self) -> dict[str, int]:
        with self._lock:
            return {m: h.heals for m, h in self.models.items()}

    # -- one pass --------------------------------------------------------------------------------
    def check_once(self) -> list[str]:
        """Find models with a missing stub and heal them; returns the models found broken."""
        pid = self._server_pid()
        if not pid:
            return []
        stubs = list_stubs(pid)
        alive: dict[str, set[str]] = {}
        for s in stubs:
            alive.setdefault(s.model, set()).add(s.instance)
        with self._lock:
            self._guard_regions(stubs)
            broken = {
                model: sorted(h.expected - alive.get(model, set()))
                for model, h in self.models.items()
                if h.expected - alive.get(model, set())
            }
        for model, missing in broken.items():
            self._heal(model, missing)
        # A stopped stub (SIGSTOP, a debugger) is alive but never answers: healed as a hung one, at once.
        stopped: dict[str, list[str]] = {}
        if self.watch_stopped:
            for s in stubs:
                if s.state in STOPPED_STATES and s.model in self.models and s.model not in broken:
                    stopped.setdefault(s.model, []).append(s.instance)
        for model, instances in stopped.items():
            self._heal(model, [], f"stub process of instance(s) {', '.join(sorted(instances))} is stopped")
        return sorted(set(broken) | set(stopped))

    def canary_once(self) -> list[str]:
        """One canary per model; returns the models it healed. A canary unanswered within its deadline
        counts as a miss, and `canary_misses` in a row heal the model (one slow answer on a busy host
        is not a hang). Triton's own "Stub process '<instance>' is not healthy" heals the model that
        owns that instance at once: it is Triton's verdict, and with several instances only some
        canaries reach the hung one."""
        if self._canary is None:
            return []
        with self._lock:
            models = sorted(m for m, h in self.models.items() if h.unhealthy_since is None)
        healed: list[str] = []
        for model in models:
            if self._stop.is_set():
                break
            started = time.monotonic()
            problem = self._canary(model)
            with self._lock:
                h = self.models[model]
                h.canary_seconds = time.monotonic() - started
                if problem is None:
                    h.canary_missed = 0
                    continue
                h.canary_failures += 1
                h.canary_missed += 1
                missed = h.canary_missed
            self._event(logging.WARNING, f"model {model}: canary {missed} of {self.canary_misses} missed: {problem}")
            owner = self._owner_of_unhealthy_stub(problem)
            target = owner or model
            if (owner is not None or missed >= self.canary_misses) and target not in healed:
                healed.append(target)
                self._heal(target, [], f"stub not answering ({missed} canary(ies) of {model} missed: {problem})")
                with self._lock:
                    h.canary_missed = 0
        return healed

    def _owner_of_unhealthy_stub(self, problem: str) -> str | None:
        """The model whose instance Triton named in "Stub process '<instance>' is not healthy"."""
        found = _UNHEALTHY_STUB.search(problem)
        if found is None:
            return None
        instance = found.group(1)
        pid = self._server_pid()
        for s in list_stubs(pid) if pid else []:
            if s.instance == instance:
                return s.model
        with self._lock:
            return next((m for m, h in self.models.items() if instance in h.expected), None)

    def _heal(self, model: str, missing: list[str], problem: str | None = None) -> None:
        """Reload `model` (or restart the server): `missing` instances have no live stub, or, with
        `problem`, its stubs are alive but do not answer (then every stub must be replaced)."""
        with self._heal_lock:
            self._heal_locked(model, missing, problem)

    def _heal_locked(self, model: str, missing: list[str], problem: str | None) -> None:
        if missing and not set(missing) - {s.instance for s in self._stubs_of(model)}:
            return  # healed meanwhile (by a heal the other thread had under way)
        if self._stop.is_set():
            return  # the server is being stopped: its stubs are going away on purpose
        now = time.monotonic()
        hung_pids = {s.pid for s in self._stubs_of(model)} if problem else set()
        with self._lock:
            h = self.models[model]
            if h.unhealthy_since is None:
                h.unhealthy_since = now
            h.last_problem = problem or f"stub process of instance(s) {', '.join(missing)} is gone"
            while h.recent and now - h.recent[0] > HEAL_WINDOW_S:
                h.recent.popleft()
            give_up = len(h.recent) >= self.max_heals
            if not give_up:
                h.recent.append(now)
        if give_up:
            # Left down and reported (/health 503, the unhealthy gauge): a model that keeps dying needs
            # a person, not a reload loop. Said once per outage.
            if not h.gave_up:
                h.gave_up = True
                self._event(logging.ERROR, f"model {model}: {h.last_problem}; not healed (limit of "
                            f"{self.max_heals} heals per 10 minutes reached)")
            return
        self._event(logging.WARNING, f"model {model}: {h.last_problem}; healing it by "
                    + ("reloading it" if self._reload else "restarting the server"))
        started = time.monotonic()
        if self._reload is not None:
            ok = self._reload(model)
        else:
            self._restart()
            ok = True
            with self._lock:
                self.server_restarts += 1
        # Healed means every missing instance has a live stub again, not just "the API said 200"; for
        # a hung model, that none of the stubs that did not answer serves it any more.
        stubs_now = self._stubs_of(model)
        ok = ok and set(missing) <= {s.instance for s in stubs_now}
        with self._lock:
            if ok:
                h.heals += 1
                h.unhealthy_since = None
                h.last_problem = ""
                h.gave_up = False
            else:
                h.failed_heals += 1
        if ok:
            self._event(logging.WARNING, f"model {model} healed in {time.monotonic() - started:.2f} s "
                        f"(heal {h.heals})")
        else:
            self._event(logging.ERROR, f"model {model}: reload failed; it stays unhealthy")
        if ok and hung_pids:
            # The replaced instances' stubs end on their own once their requests are done (a few
            # seconds); one that is still there after LEFTOVER_GRACE_S is the hung one.
            grace_end = time.monotonic() + LEFTOVER_GRACE_S
            left = hung_pids & {s.pid for s in stubs_now}
            while left and time.monotonic() < grace_end and not self._stop.is_set():
                time.sleep(0.2)
                left = hung_pids & {s.pid for s in self._stubs_of(model)}
            if left and self._reload is not None:
                # Triton keeps an old instance until its in-flight requests end, which a hung stub never
                # does: end those stubs (Triton then fails their requests and finishes the swap).
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                self._event(logging.WARNING, f"model {model}: killed {len(left)} hung stub(s) the reload "
                            f"left behind (pids {sorted(left)})")

    def _stubs_of(self, model: str) -> list[Stub]:
        pid = self._server_pid()
        return [s for s in list_stubs(pid) if s.model == model] if pid else []

    def _event(self, level: int, message: str) -> None:
        logger.log(level, "%s", message)
        self.events.append(message)

    # -- thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.baseline()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stub-healer", daemon=True)
        self._thread.start()
        if self._canary is not None and self.canary_interval_s > 0:
            # Its own thread: a canary waits up to its deadline, the process watch must not.
            self._canary_thread = threading.Thread(target=self._run_canaries, name="stub-canary", daemon=True)
            self._canary_thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the watchdog must outlive any one bad pass
                logger.exception("stub healer pass failed")

    def _run_canaries(self) -> None:
        while not self._stop.wait(self.canary_interval_s):
            try:
                self.canary_once()
            except Exception:
                logger.exception("canary pass failed")

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._canary_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        self._thread = self._canary_thread = None

    # -- what Prometheus and the probes read -----------------------------------------------------
    def metrics_text(self) -> str:
        with self._lock:
            items = sorted(self.models.items())
            restarts = self.server_restarts
        lines = [
            "# HELP tdk_healer_stub_heals_total Python-backend stub deaths healed (model reloaded or server "
            "restarted).",
            "# TYPE tdk_healer_stub_heals_total counter",
            *(f'tdk_healer_stub_heals_total{{model="{m}"}} {h.heals}' for m, h in items),
            "# HELP tdk_healer_model_unhealthy 1 while a model has a dead stub that is not healed yet.",
            "# TYPE tdk_healer_model_unhealthy gauge",
            *(f'tdk_healer_model_unhealthy{{model="{m}"}} {int(h.unhealthy_since is not None)}' for m, h in items),
            "# HELP tdk_healer_canary_failures_total Canary inferences not answered within their deadline (or "
            "answered with a stub health error).",
            "# TYPE tdk_healer_canary_failures_total counter",
            *(f'tdk_healer_canary_failures_total{{model="{m}"}} {h.canary_failures}' for m, h in items),
            "# HELP tdk_healer_canary_seconds Round trip of the last canary inference.",
            "# TYPE tdk_healer_canary_seconds gauge",
            *(f'tdk_healer_canary_seconds{{model="{m}"}} {h.canary_seconds:.4f}' for m, h in items),
            "# HELP tdk_healer_server_restarts_total Server restarts done by the healer.",
            "# TYPE tdk_healer_server_restarts_total counter",
            f"tdk_healer_server_restarts_total {restarts}",
        ]
        return "\n".join(lines) + "\n"


HEAL_PARAMETER = "tdk_heal"


def http_reload(http_url: str, headers: dict[str, str], timeout_s: float = 120.0) -> Callable[[str], bool]:
    """`reload(model)` through Triton's repository API (explicit model-control mode only).

    Triton 2.51 treats a load request for an unchanged model as done (measured: 200 in 3 ms, the dead
    stub stays dead), and a config override identical to the served config likewise. So the served
    config goes back with one parameter changed, `tdk_heal: <n>`, which no model reads: that
    is a changed config, and Triton loads new instances (with their warmup) before it drops the old.
    """
    generation = [0]

    def reload(model: str) -> bool:
        generation[0] += 1
        base = f"http://{http_url}/v2"
        try:
            req = urllib.request.Request(f"{base}/models/{model}/config", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as r:
                config = json.loads(r.read())
            config.setdefault("parameters", {})[HEAL_PARAMETER] = {"string_value": str(generation[0])}
            body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
            req = urllib.request.Request(
                f"{base}/repository/models/{model}/load", data=body, method="POST", headers=headers
            )
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError) as e:
            logger.error("reload of %s through the repository API failed: %s", model, e)
            return False

    return reload


# Bytes per element of Triton's fixed-size types (config names); TYPE_STRING (BYTES) is serialized.
_TYPE_SIZES = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2, "TYPE_FP16": 2,
    "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4, "TYPE_UINT64": 8, "TYPE_INT64": 8,
    "TYPE_FP64": 8,
}
STUB_UNHEALTHY_MARKERS = ("Stub process", "is not healthy")
_UNHEALTHY_STUB = re.compile(r"Stub process '([^']+)' is not healthy")


def canary_request(config: dict, model_dir: Path | None) -> tuple[bytes, int] | None:
    """(body, JSON header length) of a one-sample inference in Triton's binary HTTP form, built from
    the served config: the model's smallest warmup sample (its data file, or zeros), else a zero
    tensor per input (in range for the declared 0-255 inputs). None when no known-good sample exists
    (a BYTES input without a warmup file: zeros are not a valid image)."""
    batching = int(config.get("max_batch_size", 0)) > 0
    warmups = sorted(config.get("model_warmup", []), key=lambda w: int(w.get("batch_size", 1)))
    warm_inputs: dict = warmups[0].get("inputs", {}) if warmups else {}
    inputs, blobs = [], []
    for inp in config.get("input", []):
        name, dtype = inp["name"], inp.get("data_type", "TYPE_FP32")
        warm = warm_inputs.get(name, {})
        dims = [max(int(d), 1) for d in (warm.get("dims") or inp.get("dims", []))]
        count = 1
        for d in dims:
            count *= d
        data: bytes | None = None
        if warm.get("input_data_file") and model_dir is not None:
            data = _read(model_dir / "warmup" / warm["input_data_file"])
        if data is None:
            if dtype not in _TYPE_SIZES:
                return None
            data = bytes(count * _TYPE_SIZES[dtype])
        shape = [1, *dims] if batching else dims
        wire_type = "BYTES" if dtype == "TYPE_STRING" else dtype.removeprefix("TYPE_")
        inputs.append({"name": name, "shape": shape, "datatype": wire_type,
                       "parameters": {"binary_data_size": len(data)}})
        blobs.append(data)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(blobs), len(header)


def http_canary(
    http_url: str, repositories: list[Path], timeout_s: float = 5.0, headers: dict[str, str] | None = None
) -> Callable[[str], str | None]:
    """`canary(model)`: one known-good inference (canary_request) with a deadline. None when the model
    answered in time, whatever it answered (an answer, even an error, proves its stub is alive), else
    what went wrong: no answer within timeout_s, or Triton's own "Stub process ... is not healthy".
    A server that refuses the connection is not the canary's business (the process watch has it)."""
    base = f"http://{http_url}/v2/models"

    def model_dir(model: str) -> Path | None:
        for repo in repositories:
            if (Path(repo) / model / "config.pbtxt").is_file():
                return Path(repo) / model
        return None

    def canary(model: str) -> str | None:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/{model}/config", headers=headers or {}),
                                        timeout=timeout_s) as r:
                config = json.loads(r.read())
        except urllib.error.HTTPError:
            return None  # not served (unloaded by a lifecycle step): nothing to check
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"no answer to the config request within {timeout_s:.1f} s" if _timed_out(e) else None
        built = canary_request(config, model_dir(model))
        if built is None:
            return None
        body, header_len = built
        req = urllib.request.Request(
            f"{base}/{model}/infer", data=body, method="POST",
            headers={**(headers or {}), "Content-Type": "application/octet-stream",
                     "Inference-Header-Content-Length": str(header_len)},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                r.read()
            return None
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            if any(marker in detail for marker in STUB_UNHEALTHY_MARKERS):
                return f"HTTP {e.code}: {detail.strip()[:200]}"
            logger.debug("canary of %s answered HTTP %d: %s", model, e.code, detail[:200])
            return None
        except (urllib.error.URLError, OSError) as e:
            return f"no answer within {timeout_s:.1f} s" if _timed_out(e) else None

    return canary


def _timed_out(e: BaseException) -> bool:
    reason = getattr(e, "reason", e)
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def repository_locked(
    reload: Callable[[str], bool], repositories: list[Path], wait_s: float = 30.0
) -> Callable[[str], bool]:
    """`reload` holding the lifecycle's lock on each repository folder (control/rollout.py takes the
    same flock for a whole step). A heal fetches the served config and loads it back: between a
    lifecycle step's load and its next one that could put back the config the step just replaced
    (router weights, version policy). Waiting for the step keeps the two in order; after `wait_s` the
    heal goes ahead anyway (a step stuck behind the dead stub must not keep the model down)."""

    def locked(model: str) -> bool:
        with contextlib.ExitStack() as held:
            for repo in repositories:
                try:
                    got = held.enter_context(folder_lock(repo, wait_s))
                except OSError:
                    continue  # a repository folder gone: nothing to keep in order with
                if not got:
                    logger.warning("a lifecycle step has held %s for %.0f s; reloading %s anyway",
                                   repo, wait_s, model)
            return reload(model)

    return locked


class HealthEndpoint:
    """`/health` (200 only when Triton is ready and no model has a dead stub) and `/metrics`."""

    def __init__(self, healer: Healer, triton_ready: Callable[[], bool], host: str, port: int) -> None:
        healer_ref, ready_ref = healer, triton_ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, healer_ref.metrics_text().encode(), "text/plain; version=0.0.4")
                elif self.path.startswith("/health"):
                    problems = healer_ref.unhealthy()
                    ready = ready_ref()
                    body = {"ready": ready, "unhealthy_models": problems, "heals": healer_ref.heals()}
                    ok = ready and not problems
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"not found; try /health or /metrics\n", "text/plain")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("health endpoint: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health-endpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def remove_regions(names: set[str]) -> list[str]:
    """Remove leftover /dev/shm regions (after the server is gone); returns the removed names."""
    removed = []
    for name in sorted(names):
        path = SHM_DIR / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(name)
    return removed

