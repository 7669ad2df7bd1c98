"""Probes a running compose stack from the host (used by .ci/compose-check.sh; not a test module).

    python tests/compose/stack_probe.py infer --url 127.0.0.1:8000 [--model mnist] [--rounds 3]
    python tests/compose/stack_probe.py prometheus --url http://127.0.0.1:9090 --model mnist --min-count 30
    python tests/compose/stack_probe.py proxy --url 127.0.0.1:8080 [--oversize-mib 32]
    python tests/compose/stack_probe.py drift --url 127.0.0.1:8000 --prometheus http://127.0.0.1:9090

`infer` sends real PNG digits to the ensemble (image_bytes BYTES [1] -> probabilities FP32 [10]) over
HTTP and gRPC and checks the answers; `prometheus` checks through Prometheus's HTTP API that the
Triton target is up, that the model's nv_inference_count was scraped, that the alert rules are
loaded, that Alertmanager is connected, that TritonDown is not firing and (--dashboards) that every
Grafana panel query runs; `drift` checks that Prometheus scrapes the drift monitor, sends a shifted
stream (MNIST digits written with a thicker pen) to the ensemble and waits for ModelInputDrift to fire.
Each prints what it saw and exits non-zero with the reason when a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "models" / "mnist" / "examples"
EXPECTED_ALERTS = {
    "TritonDown",
    "TritonHighErrorRatio",
    "TritonP99LatencyAboveSLO",
    "TritonQueueTimeGrowing",
    "TritonGPUMemoryHigh",
    "ModelInputDrift",
    "ModelPredictionDrift",
    "ModelAccuracyDrop",
    "ModelCanaryWorse",
}
# compose/prometheus/recording.yml: the series the Kubernetes autoscalers read (docs/kubernetes.md).
QUEUE_RECORD = "namespace_pod_model:triton_queue_us_per_request:rate1m"
EXPECTED_RECORDS = {
    QUEUE_RECORD,
    "namespace_pod:triton_queue_us_per_request:max_rate1m",
    "namespace_pod:triton_pending_requests:sum",
}


def _say(msg: str) -> None:
    sys.stdout.write(f"    {msg}\n")
    sys.stdout.flush()


def digit_pngs() -> list[tuple[int, bytes]]:
    """(label, PNG bytes): the showcase's example digits, else ten held-out MNIST digits."""
    found = sorted(EXAMPLES.glob("digit_*.png"))
    pairs = []
    for path in found:
        m = re.fullmatch(r"digit_(\d)\.png", path.name)
        if m:
            pairs.append((int(m.group(1)), path.read_bytes()))
    if pairs:
        return pairs
    from PIL import Image

    from clients.datasets import mnist_holdout

    holdout = mnist_holdout()
    out = []
    for digit in range(10):
        idx = int(np.flatnonzero(holdout.labels == digit)[0])
        buf = io.BytesIO()
        Image.fromarray(np.asarray(holdout.images[idx], dtype=np.uint8).reshape(28, 28)).save(buf, format="PNG")
        out.append((digit, buf.getvalue()))
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    digits = digit_pngs()
    host = args.url.rsplit(":", 1)[0]
    clients = [("http", httpclient, httpclient.InferenceServerClient(args.url))]
    if args.grpc_url:
        clients.append(("grpc", grpcclient, grpcclient.InferenceServerClient(args.grpc_url)))
    sent = correct = 0
    try:
        for proto, mod, client in clients:
            if not client.is_model_ready(args.model):
                raise SystemExit(f"model {args.model!r} is not ready on {proto} {host}")
            for _ in range(args.rounds):
                for label, png in digits:
                    inp = mod.InferInput("image_bytes", [1, 1], "BYTES")
                    inp.set_data_from_numpy(np.array([[png]], dtype=np.object_))
                    out = client.infer(args.model, [inp], outputs=[mod.InferRequestedOutput("probabilities")])
                    probs = out.as_numpy("probabilities")
                    if probs is None or probs.shape != (1, 10):
                        raise SystemExit(f"{proto}: unexpected output shape {None if probs is None else probs.shape}")
                    if not np.isclose(float(probs.sum()), 1.0, atol=1e-3):
                        raise SystemExit(f"{proto}: probabilities sum to {probs.sum():.4f}, not 1")
                    sent += 1
                    correct += int(int(probs.argmax()) == label)
    finally:
        for _, _, client in clients:
            client.close()  # an open keep-alive connection would delay the server's shutdown
    ratio = correct / sent
    _say(
        f"sent {sent} PNG digits to {args.model!r} over {', '.join(p for p, _, _ in clients)}: "
        f"{correct} classified correctly ({ratio:.0%})"
    )
    if ratio < args.min_correct:
        raise SystemExit(f"only {ratio:.0%} correct (need {args.min_correct:.0%}): the served pipeline is broken")
    if args.count_file:
        Path(args.count_file).write_text(f"{sent}\n")
    return 0


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def _query(base: str, expr: str) -> list[dict]:
    return _api(base, "/api/v1/query", query=expr)["result"]


def _walk_exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _walk_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _walk_exprs(v)]
    return []


def _grafana_to_promql(expr: str, model: str) -> str:
    """A dashboard query as Grafana would send it with $model = `model` and every version."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    expr = re.sub(r'=~"\$\{?version\}?"', '=~".*"', expr)
    expr = re.sub(r'=~"\$\{?model\}?"', f'=~"{model}"', expr)
    return re.sub(r'="\$\{?model\}?"', f'="{model}"', expr)


def check_dashboards(base: str, folder: Path, model: str) -> str:
    """Every dashboard panel query must run in this Prometheus; returns a summary."""
    exprs = []
    for path in sorted(folder.glob("*.json")):
        exprs += _walk_exprs(json.loads(path.read_text()).get("panels", []))
    with_data = 0
    for expr in exprs:
        try:
            result = _query(base, _grafana_to_promql(expr, model))
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"dashboard query rejected by Prometheus: {expr}\n  {e}") from e
        with_data += bool(result)
    return f"{len(exprs)} dashboard queries run ({with_data} with data now)"


def cmd_prometheus(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    deadline = time.monotonic() + args.timeout
    problems: list[str] = []
    while True:
        problems = []
        try:
            up = _query(base, 'up{job="triton"}')
            if not up or up[0]["value"][1] != "1":
                problems.append(f"Triton target not up yet: {up}")
            count_expr = f'sum(nv_inference_count{{job="triton", model="{args.model}"}})'
            count = _query(base, count_expr)
            value = float(count[0]["value"][1]) if count else 0.0
            if value < args.min_count:
                problems.append(f"{count_expr} = {value:g}, expected >= {args.min_count}")
            groups = _api(base, "/api/v1/rules", type="alert")["groups"]
            loaded = {r["name"] for g in groups for r in g["rules"]}
            if EXPECTED_ALERTS - loaded:
                problems.append(f"alert rules missing: {sorted(EXPECTED_ALERTS - loaded)}")
            # The autoscaling recording rules (recording.yml, the series Kubernetes scales on) run here too.
            recorded = {r["name"] for g in _api(base, "/api/v1/rules", type="record")["groups"] for r in g["rules"]}
            if EXPECTED_RECORDS - recorded:
                problems.append(f"recording rules missing: {sorted(EXPECTED_RECORDS - recorded)}")
            queue_expr = f'{QUEUE_RECORD}{{model="{args.model}"}}'
            if not _query(base, queue_expr):
                problems.append(f"{queue_expr}: no series recorded yet")
            ams = _api(base, "/api/v1/alertmanagers")["activeAlertmanagers"]
            if not ams:
                problems.append("Prometheus has no active Alertmanager")
            firing = [
                a["labels"]["alertname"] for a in _api(base, "/api/v1/alerts")["alerts"] if a["state"] == "firing"
            ]
            if "TritonDown" in firing:
                problems.append("TritonDown is firing")
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            problems.append(f"Prometheus API: {e}")
        if not problems:
            break
        if time.monotonic() > deadline:
            details = "\n  ".join(problems)
            raise SystemExit(f"Prometheus checks failed after {args.timeout:.0f} s:\n  {details}")
        time.sleep(2)
    if args.dashboards:
        _say(check_dashboards(base, Path(args.dashboards), args.model))
    _say(
        f"Prometheus: target triton up; {count_expr} = {value:g}; {len(loaded)} alert rules and "
        f"{len(recorded)} recording rules loaded; "
        f"Alertmanager {ams[0]['url']}; firing now: {firing or 'none'}"
    )
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    """The front proxy refuses a body over its limit (413), a restricted API (403) and malformed JSON (400)."""
    import http.client

    host, port = args.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/v2/models/mnist/infer", body=bytes(args.oversize_mib << 20),
                     headers={"Content-Type": "application/octet-stream"})
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        status = 413  # refused while the body was still being sent
    finally:
        conn.close()
    _say(f"{args.oversize_mib} MiB body through the proxy: HTTP {status}")
    if status != 413:
        _say(f"FAIL: expected 413 for a {args.oversize_mib} MiB body")
        return 1
    req = urllib.request.Request(f"http://{args.url}/v2/logging", data=b'{"log_verbose_level": 1}', method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    _say(f"POST /v2/logging through the proxy: HTTP {code}")
    if code != 403:
        _say("FAIL: expected 403 for the logging API through the proxy")
        return 1
    # The reporter's malformed JSON: Triton 2.51 answers 500; the proxy's njs check, 400.
    req = urllib.request.Request(f"http://{args.url}/v2/models/mnist/infer", data=b'{"inputs": [', method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        code, text = 200, ""
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode(errors="replace")
    _say(f"malformed JSON through the proxy: HTTP {code} {text}")
    if code != 400:
        _say("FAIL: expected 400 for malformed JSON through the proxy (is nginx's njs module in the image?)")
        return 1
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """The drift monitor in the stack: scraped, and its input-drift alert fires after a shifted stream."""
    import tritonclient.http as httpclient

    from build_tools.served import classifier_names, default_spec_path
    from build_tools.spec import load_spec
    from clients.drift_demo import scenario_data

    base = args.prometheus.rstrip("/")
    deadline = time.monotonic() + args.timeout
    while True:
        up = _query(base, 'up{job="drift-monitor"}')
        thresholds = _query(base, 'tdk_monitor_threshold{job="drift-monitor"}')
        if up and up[0]["value"][1] == "1" and thresholds:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the drift monitor is not scraped: up = {up}, "
                             f"tdk_monitor_threshold series {len(thresholds)}")
        time.sleep(2)
    _say(f"Prometheus scrapes the drift monitor ({len(thresholds)} threshold series)")
    # The spec's shift of its model's data, from the model's adapter (as make drift-demo sends it).
    spec = load_spec(default_spec_path())
    data = scenario_data(spec, classifier_names(spec).classifier)
    images = data.shift(data.inputs[: args.count])
    client = httpclient.InferenceServerClient(args.url)
    started = time.monotonic()
    try:
        for i, image in enumerate(images):
            inp = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[data.encode(image)]], dtype=np.object_))
            client.infer(args.model, [inp], request_id=f"ci-shift-{i}")
    finally:
        client.close()
    _say(f"sent {len(images)} {data.shift_name} inputs to {args.model!r} in {time.monotonic() - started:.0f} s")
    deadline = time.monotonic() + args.timeout
    state = None
    while time.monotonic() < deadline:
        alerts = [a for a in _api(base, "/api/v1/alerts")["alerts"]
                  if a["labels"].get("alertname") == "ModelInputDrift"]
        state = "firing" if any(a["state"] == "firing" for a in alerts) else ("pending" if alerts else None)
        if state == "firing":
            break
        time.sleep(2)
    psi = _query(base, 'max by (model, version) (tdk_monitor_input_psi{job="drift-monitor"})')
    figures = ", ".join(f"{r['metric'].get('model')} v{r['metric'].get('version')} {float(r['value'][1]):.2f}"
                        for r in psi) or "none"
    if state != "firing":
        raise SystemExit(f"ModelInputDrift is {state or 'not active'} after {args.timeout:.0f} s; max PSI: {figures}")
    _say(f"ModelInputDrift firing {time.monotonic() - started:.0f} s after the shifted stream began; "
         f"max PSI: {figures}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("infer")
    i.add_argument("--url", required=True, help="Triton HTTP host:port")
    i.add_argument("--grpc-url", help="Triton gRPC host:port (also send over gRPC)")
    i.add_argument("--model", default="mnist")
    i.add_argument("--rounds", type=int, default=3)
    i.add_argument("--min-correct", type=float, default=0.9)
    i.add_argument("--count-file", help="write the number of requests sent here")
    i.set_defaults(func=cmd_infer)
    q = sub.add_parser("prometheus")
    q.add_argument("--url", required=True, help="Prometheus base URL")
    q.add_argument("--model", default="mnist")
    q.add_argument("--min-count", type=float, default=1)
    q.add_argument("--timeout", type=float, default=90)
    q.add_argument("--dashboards", help="folder of Grafana dashboards whose queries must run")
    q.set_defaults(func=cmd_prometheus)
    x = sub.add_parser("proxy")
    x.add_argument("--url", required=True, help="the front proxy's HTTP host:port")
    x.add_argument("--oversize-mib", type=int, default=32, help="a body this big must be refused")
    x.set_defaults(func=cmd_proxy)
    d = sub.add_parser("drift")
    d.add_argument("--url", required=True, help="Triton HTTP host:port")
    d.add_argument("--prometheus", required=True, help="Prometheus base URL")
    d.add_argument("--model", default="mnist")
    d.add_argument("--count", type=int, default=500, help="thicker-pen digits to send (the monitor's window)")
    d.add_argument("--timeout", type=float, default=240)
    d.set_defaults(func=cmd_drift)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
