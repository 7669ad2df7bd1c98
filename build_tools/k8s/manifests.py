"""Kubernetes manifests from deploy.yaml, as Python dicts (never text templates), one folder per flavor.

What comes from the spec: the flavor's server (the NGC image with `nvidia.com/gpu` for ngc, the
project's CPU image running `triton-repo serve` for embedded), the restricted APIs and their header
(`server.admin_api`), the drain bound (`server.exit_timeout_s`), the stub watchdog's port (embedded),
the GPUs the KIND_GPU instance groups name, and `/dev/shm` sized from the build's shared-memory figure
(build_tools/resources.py, the same estimate the build's shm note prints). What comes from
K8sOptions: names, images, replica bounds and the autoscaling targets.

How the model repository reaches the pods: a ReadWriteMany volume holds it. The first pod's init
container seeds it (copies the repository built into the CPU image, or builds the ngc repository
from the spec in the image), under a file lock, once. From then on the lifecycle commands
(`triton-repo stage|canary|promote|rollback`) keep that folder in step with the registry after every
step, so a pod that starts later (scale-up, restart, roll-out) loads exactly the registry's active
versions and router weights. An init container copying into an emptyDir would start every new pod on
the image's versions instead, and a canary applied to one pod would be lost on the next restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from build_tools.config import default_instance_groups
from build_tools.resources import MIB, python_backend_shm_estimate
from build_tools.spec import DeploySpec, FlavorName

Manifest = dict[str, Any]

PART_OF = "triton-deploy-kit"
JOB_LABEL = "triton-deploy-kit/job"  # the ServiceMonitor's jobLabel: job="triton" as in compose's alerts
SCRAPE_LABEL = "triton-deploy-kit/scrape"
CLIENT_NS_LABEL = "triton-deploy-kit/inference-client"
STORE = "/var/lib/triton/store"  # the shared volume
REPOSITORY = f"{STORE}/model_repository"
WORKDIR = "/var/lib/triton/work"
PROJECT_DIR = "/opt/triton-deploy-kit"  # where compose/Dockerfile.cpu puts the project
IMAGE_REPOSITORY = "/models"  # the embedded repository built into the CPU image
HTTP, GRPC, METRICS, HEALTH = 8000, 8001, 8002, 8003
PROXY_HTTP, PROXY_GRPC = 8080, 8081  # the front proxy's ports (compose: the proxy service's)
PROXY_STATE = "/var/lib/triton/proxy"  # nginx's configuration, pid file and temp folders (an emptyDir)
MONITOR_PORT = 8010  # triton-monitor serve (issue 13; compose: MONITOR_PORT)
REGISTRY_PORT = 5432
LOCUST_PORT = 5557
UID = 1000  # the NGC image's triton-server user; any non-root uid works for the CPU image
POSTGRES_UID = 999  # the postgres user of the official image
SHM_FLOOR_BYTES = 1024 * MIB  # compose: shm_size 1gb

# Names the autoscalers read: recorded by compose/prometheus/recording.yml, renamed by the adapter.
QUEUE_SERIES = "namespace_pod:triton_queue_us_per_request:max_rate1m"
PENDING_SERIES = "namespace_pod:triton_pending_requests:sum"
QUEUE_METRIC = "triton_queue_us_per_request"
PENDING_METRIC = "triton_pending_requests"


@dataclass(frozen=True)
class K8sOptions:
    namespace: str = "triton"
    # The project's CPU image (compose/Dockerfile.cpu), pushed to the cluster's registry.
    image: str = "triton-deploy-kit-cpu:latest"
    # The ngc flavor's server image; default: tritonserver:<spec triton.release>-py3 (prefix your registry).
    triton_image: str | None = None
    postgres_image: str = "postgres:16-bookworm"
    spec_file: str = "deploy.yaml"  # the spec's path inside the project image
    min_replicas: int = 2
    max_replicas: int = 10
    # Average queue time per request the autoscalers hold each pod at, and pending requests per pod:
    # chosen with `triton-repo capacity` (docs/kubernetes.md): 10 ms / 8 held pods near saturation.
    queue_target_us: int = 5_000
    pending_target: int = 4
    monitoring_namespace: str = "monitoring"
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    storage_class: str | None = None  # None: the cluster's default (it must offer ReadWriteMany)
    repository_size: str = "2Gi"
    registry_size: str = "5Gi"
    locust_workers: int = 2
    extra_labels: dict[str, str] = field(default_factory=dict)


# -- small builders -----------------------------------------------------------------------------------
def _labels(component: str, opts: K8sOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/component": component, **opts.extra_labels}


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/component": component}


def _meta(name: str, component: str, opts: K8sOptions, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": _labels(component, opts), **extra}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security(uid: int = UID) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _mib(n_bytes: int) -> str:
    return f"{math.ceil(n_bytes / MIB)}Mi"


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def _tcp_probe(port: str, period: int, failures: int) -> dict[str, Any]:
    return {"tcpSocket": {"port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 3}


TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
ADMIN_SECRET = ("triton-admin", "admin-key")  # kubectl create secret generic triton-admin --from-literal=admin-key=...
REGISTRY_SECRET = ("triton-registry", "password")
REGISTRY_URL = f"postgresql://app:$(REGISTRY_PASSWORD)@triton-registry:{REGISTRY_PORT}/postgres"
MONITORING_DB_ENV = "TDK_MONITORING_DATABASE_URL"  # the prediction log's database (control/monitor/serving.py)


def registry_password_env() -> dict[str, Any]:
    """The registry's password; a later variable names it as $(REGISTRY_PASSWORD), expanded by the kubelet."""
    return _secret_env("REGISTRY_PASSWORD", *REGISTRY_SECRET)


# -- sizes from the spec -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizing:
    shm_bytes: int  # /dev/shm (memory-backed emptyDir; counts against the memory limit)
    python_instances: int
    cpu_request_m: int
    cpu_limit_m: int
    memory_request: str
    memory_limit: str
    gpus: int  # nvidia.com/gpu per pod (0 on embedded)


def sizing(spec: DeploySpec, flavor: FlavorName) -> Sizing:
    """Requests and limits from what the flavor runs: python-backend instances and the shm figure."""
    est = python_backend_shm_estimate(spec, flavor)
    # Twice the build's estimate (regions grow past the one-full-batch figure), never below the 1 GiB
    # the compose stacks run with: the estimate is a floor where tensors are BYTES (counted as 0), and
    # a memory-backed volume only takes what the stubs write into it.
    shm = max(SHM_FLOOR_BYTES, 2 * est.total_bytes)
    instances = est.instances
    cpu_request = 500 + 250 * instances  # the server's own threads plus a quarter core per stub
    base_memory = (512 + 256 * instances) * MIB  # each stub imports its runtime (ONNX Runtime, torch)
    gpus = 0
    if flavor == "ngc":
        groups = [g for m in spec.models.values() for g in default_instance_groups(m, flavor)]
        if any(g.kind == "KIND_GPU" for g in groups):
            listed = {i for g in groups if g.kind == "KIND_GPU" for i in (g.gpus or [0])}
            gpus = max(listed) + 1
    # The request counts the shm the build expects; the limit leaves room for all of it.
    return Sizing(shm, instances, cpu_request, 2 * cpu_request, _mib(base_memory + est.total_bytes),
                  _mib(2 * base_memory + shm), gpus)


# -- the Triton pods ---------------------------------------------------------------------------------
def _seed_script(spec_file: str, flavor: FlavorName) -> str:
    """The init container's job: fill the shared volume once, under a lock (pods start together)."""
    if flavor == "embedded":
        fill = f'cp -a {IMAGE_REPOSITORY}/. "$tmp/"'
    else:
        # The ngc repository is built from the spec with the project in the image (ONNX files,
        # configs, the router; TensorRT plans are optional there and built on a GPU: docs/tensorrt.md).
        fill = (f'src="$(mktemp -d)" && cp -a {PROJECT_DIR}/. "$src/" && cd "$src" '
                f'&& triton-repo build-repo --spec {spec_file} --flavor ngc '
                f'&& cp -a "$(python -c \'import sys; from build_tools.spec import load_spec; '
                f's = load_spec(sys.argv[1]); print(s.resolve(s.flavors["ngc"].output))\' {spec_file})"/. "$tmp/"')
    return "\n".join([
        "set -eu",
        f"exec 9>{STORE}/.seed.lock",
        "flock 9",
        f"if [ -d {REPOSITORY} ]; then echo 'repository already on the volume: kept (the lifecycle owns it)'; "
        "exit 0; fi",
        f'tmp="$(mktemp -d -p {STORE} .seed.XXXXXX)"',
        fill,
        f'mv "$tmp" {REPOSITORY}',
        f"echo 'repository seeded into {REPOSITORY}'",
    ])


def _triton_container(spec: DeploySpec, flavor: FlavorName, opts: K8sOptions, size: Sizing) -> dict[str, Any]:
    admin = spec.server.admin_api
    resources: dict[str, Any] = {
        "requests": {"cpu": f"{size.cpu_request_m}m", "memory": size.memory_request},
        "limits": {"cpu": f"{size.cpu_limit_m}m", "memory": size.memory_limit},
    }
    ports = [_port("http", HTTP), _port("grpc", GRPC), _port("metrics", METRICS)]
    mounts = [{"name": "store", "mountPath": STORE}, {"name": "dshm", "mountPath": "/dev/shm"}, TMP_MOUNT]
    env = [_secret_env("TRITON_ADMIN_KEY", *ADMIN_SECRET), _env("HOME", "/tmp")]
    if spec.monitoring.enabled and flavor == "embedded":
        # The prediction log (issue 13a) in the registry's PostgreSQL, where the drift monitor reads it.
        # Not on ngc: the official image has no PostgreSQL driver, so the router's copy of the watching
        # code keeps the spec's SQLite log on the store volume (docs/monitoring.md, "Flavors").
        env += [registry_password_env(), _env(MONITORING_DB_ENV, REGISTRY_URL)]
    if flavor == "ngc":
        restricted = f"{','.join(admin.restricted)}:{admin.header}=$(TRITON_ADMIN_KEY)"
        args = [
            f"--model-repository={REPOSITORY}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--allow-metrics=true",
            "--allow-gpu-metrics=true",
            "--metrics-config=summary_latencies=true",
            f"--exit-timeout-secs={spec.server.exit_timeout_s}",
        ]
        if admin.restricted:
            args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
        image = opts.triton_image or f"tritonserver:{spec.triton.release}-py3"
        command = ["tritonserver"]
        if size.gpus:
            resources["requests"]["nvidia.com/gpu"] = size.gpus
            resources["limits"]["nvidia.com/gpu"] = size.gpus
    else:
        # `triton-repo serve`: the same harness as make serve and the compose stack (restricted APIs
        # from the spec, the stub watchdog on HEALTH, log rotation), bound to the pod's address.
        args = [
            "--spec", opts.spec_file, "--host", "0.0.0.0",
            "--http-port", str(HTTP), "--grpc-port", str(GRPC), "--metrics-port", str(METRICS),
            "--health-port", str(HEALTH), "--model-repository", REPOSITORY, "--workdir", WORKDIR,
            "--model-control", "explicit",
            # The pod's proxy sidecar is the front proxy; `serve` must not start another.
            "--no-proxy",
        ]
        env.append(_env("TRITON_EXTRA_ARGS", "--metrics-config=summary_latencies=true"))
        image = opts.image
        command = ["triton-repo", "serve"]
        ports.append(_port("health", HEALTH))
        mounts.append({"name": "work", "mountPath": WORKDIR})
    container: dict[str, Any] = {
        "name": "triton",
        "image": image,
        "command": command,
        "args": args,
        "ports": ports,
        "env": env,
        "resources": resources,
        # Model loading (warmup included) can take minutes: the startup probe allows 10, then the
        # readiness probe takes the pod out of the Service while a model is not ready (embedded: the
        # in-process watchdog's /health, also 503 while a model has a dead or hung stub; ngc: the
        # watchdog sidecar's readiness probe does that).
        "startupProbe": _http_probe("/v2/health/ready", "http", 5, 120),
        "readinessProbe": _http_probe("/health" if flavor == "embedded" else "/v2/health/ready",
                                      "health" if flavor == "embedded" else "http", 5, 3),
        "livenessProbe": _http_probe("/v2/health/live", "http", 10, 3, timeout=5),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
    }
    if flavor == "embedded":
        container["workingDir"] = PROJECT_DIR
    return container


def _proxy_container(spec: DeploySpec, opts: K8sOptions) -> dict[str, Any]:
    """The front proxy (build_tools/proxy.py, `triton-repo proxy`): nginx from the project's CPU image,
    configured at start from the image's spec (server.proxy, server.admin_api), in front of Triton on
    the pod's loopback. The Service `triton` sends clients here, never to Triton's own ports."""
    return {
        "name": "proxy",
        "image": opts.image,
        "command": ["triton-repo", "proxy"],
        "args": [
            f"--spec={opts.spec_file}",
            f"--listen-http=0.0.0.0:{PROXY_HTTP}", f"--listen-grpc=0.0.0.0:{PROXY_GRPC}",
            f"--upstream-http=127.0.0.1:{HTTP}", f"--upstream-grpc=127.0.0.1:{GRPC}",
            f"--state-dir={PROXY_STATE}",
        ],
        "workingDir": PROJECT_DIR,
        "env": [_env("HOME", "/tmp")],
        "ports": [_port("proxy-http", PROXY_HTTP), _port("proxy-grpc", PROXY_GRPC)],
        # nginx buffers a body up to 1 MiB in memory, the rest (up to the limit) in its temp folder.
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        # Through the proxy to Triton's readiness: both must answer before the pod takes traffic.
        "readinessProbe": _http_probe("/v2/health/ready", "proxy-http", 5, 3),
        "livenessProbe": _tcp_probe("proxy-http", 10, 3),
        "volumeMounts": [{"name": "proxy-state", "mountPath": PROXY_STATE}, TMP_MOUNT],
        "securityContext": _container_security(),
    }


def _watchdog_container(spec: DeploySpec, opts: K8sOptions) -> dict[str, Any]:
    """ngc: the stub watchdog (`triton-repo watchdog`) beside tritonserver, in the pod's shared process
    namespace. It runs as the server's uid (1000), so it may signal the server's stub processes
    without root or capabilities (the compose GPU stack runs it as root because Triton runs as root
    there). Its /health (503 while Triton is not ready or a model has a dead or hung stub) is the
    pod's readiness; its liveness is only the port answering, so a heal in progress is not a restart."""
    return {
        "name": "watchdog",
        "image": opts.image,
        "command": ["triton-repo", "watchdog"],
        "args": [
            f"--spec={opts.spec_file}", f"--url=127.0.0.1:{HTTP}", f"--model-repository={REPOSITORY}",
            "--host=0.0.0.0", f"--health-port={HEALTH}",
        ],
        "workingDir": PROJECT_DIR,
        "env": [_secret_env("TRITON_ADMIN_KEY", *ADMIN_SECRET), _env("HOME", "/tmp")],
        "ports": [_port("health", HEALTH)],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        # It serves /health once Triton is ready (model loading: the same 10 minutes as Triton's).
        "startupProbe": _tcp_probe("health", 5, 120),
        "readinessProbe": _http_probe("/health", "health", 5, 3),
        "livenessProbe": _tcp_probe("health", 10, 3),
        "volumeMounts": [{"name": "store", "mountPath": STORE, "readOnly": True}, TMP_MOUNT],
        "securityContext": _container_security(),
    }


def triton_deployment(spec: DeploySpec, flavor: FlavorName, opts: K8sOptions) -> Manifest:
    size = sizing(spec, flavor)
    volumes: list[dict[str, Any]] = [
        {"name": "store", "persistentVolumeClaim": {"claimName": "triton-model-repository"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _mib(size.shm_bytes)}},
        TMP_VOLUME,
        # nginx writes its configuration, pid file and request bodies above 1 MiB here: room for 64
        # requests at the limit in flight (beyond its sizeLimit the kubelet would evict the pod).
        {"name": "proxy-state", "emptyDir": {"sizeLimit": _mib(64 * spec.server.proxy.max_request_mib * MIB)}},
    ]
    if flavor == "embedded":
        volumes.append({"name": "work", "emptyDir": {}})
    containers = [_triton_container(spec, flavor, opts, size), _proxy_container(spec, opts)]
    if flavor == "ngc":
        containers.append(_watchdog_container(spec, opts))
    seed = {
        "name": "seed-repository",
        "image": opts.image,
        "command": ["bash", "-c", _seed_script(opts.spec_file, flavor)],
        "env": [_env("HOME", "/tmp")],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [{"name": "store", "mountPath": STORE}, TMP_MOUNT],
        "securityContext": _container_security(),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": "triton-deploy-kit",
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        # Triton drains for exit_timeout_s after SIGTERM; the kubelet must wait a little longer.
        "terminationGracePeriodSeconds": spec.server.exit_timeout_s + 10,
        "initContainers": [seed],
        "containers": containers,
        "volumes": volumes,
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _selector("triton")},
        }],
    }
    if flavor == "ngc":
        # The watchdog sees tritonserver and its stubs in /proc (dead stubs; hung ones it ends).
        pod_spec["shareProcessNamespace"] = True
    if size.gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("triton", "triton", opts, annotations={
            "triton-deploy-kit/flavor": flavor,
            "triton-deploy-kit/shm-estimate": _mib(python_backend_shm_estimate(spec, flavor).total_bytes),
            # What the proxy sidecar reads from the image's spec (server.proxy) when it starts.
            "triton-deploy-kit/proxy-max-request-mib": str(spec.server.proxy.max_request_mib),
        }),
        "spec": {
            # The autoscaler owns the count from here on; this is the count before it acts.
            "replicas": opts.min_replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector("triton")},
            # A new pod serves before an old one goes: capacity never drops during a roll-out.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": _labels("triton", opts)}, "spec": pod_spec},
        },
    }


def _service(name: str, component: str, opts: K8sOptions, ports: list[tuple[str, int]],
             labels: dict[str, str] | None = None, targets: dict[str, str] | None = None) -> Manifest:
    """A ClusterIP Service; `targets` maps a port's name to another container port's name."""
    meta = _meta(name, component, opts)
    meta["labels"].update(labels or {})
    targets = targets or {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(component),
            "ports": [{"name": n, "port": p, "targetPort": targets.get(n, n), "protocol": "TCP"} for n, p in ports],
        },
    }


def triton_objects(spec: DeploySpec, flavor: FlavorName, opts: K8sOptions) -> list[Manifest]:
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": opts.repository_size}},
    }
    if opts.storage_class:
        pvc_spec["storageClassName"] = opts.storage_class
    docs: list[Manifest] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("triton-deploy-kit", "triton", opts),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": _meta("triton-model-repository", "triton", opts), "spec": pvc_spec},
        triton_deployment(spec, flavor, opts),
        # Inference (HTTP, gRPC) through the front proxy: the clients' ports 8000/8001 lead to the proxy
        # sidecar, never to Triton's own. ClusterIP: reachable inside the cluster, never published.
        _service("triton", "triton", opts, [("http", HTTP), ("grpc", GRPC)],
                 targets={"http": "proxy-http", "grpc": "proxy-grpc"}),
        _service("triton-metrics", "triton", opts, [("metrics", METRICS)],
                 {JOB_LABEL: "triton", SCRAPE_LABEL: "true"}),
        # The stub watchdog (embedded: inside `triton-repo serve`; ngc: the sidecar): /health, /metrics.
        _service("triton-healer", "triton", opts, [("health", HEALTH)],
                 {JOB_LABEL: "triton-healer", SCRAPE_LABEL: "true"}),
    ]
    monitoring_ns = _monitoring_ns(opts)
    same_ns = {"podSelector": {}}
    scrape_ports = [METRICS, HEALTH]
    docs += [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("triton", "triton", opts),
            "spec": {
                "podSelector": {"matchLabels": _selector("triton")},
                "policyTypes": ["Ingress"],
                "ingress": [
                    # Inference through the proxy, from this namespace (locust, the lifecycle tools) and
                    # from namespaces labelled as clients.
                    {"from": [same_ns, {"namespaceSelector": {"matchLabels": {CLIENT_NS_LABEL: "true"}}}],
                     "ports": [{"protocol": "TCP", "port": PROXY_HTTP}, {"protocol": "TCP", "port": PROXY_GRPC}]},
                    # Triton's own ports: the proxy and the watchdog reach them on the pod's loopback,
                    # which no policy filters; from outside the pod only the lifecycle pod (the
                    # repository API, with the admin key: the proxy answers it 403).
                    {"from": [{"podSelector": {"matchLabels": _selector("lifecycle")}}],
                     "ports": [{"protocol": "TCP", "port": HTTP}, {"protocol": "TCP", "port": GRPC}]},
                    # Metrics and the watchdog's health: Prometheus and this namespace only.
                    {"from": [same_ns, monitoring_ns],
                     "ports": [{"protocol": "TCP", "port": p} for p in scrape_ports]},
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta("triton", "triton", opts),
            # A node drain takes one pod at a time; the others keep serving.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector("triton")}},
        },
    ]
    return docs


def _monitoring_ns(opts: K8sOptions) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.monitoring_namespace}}}


# -- lifecycle: the registry and the tools pod --------------------------------------------------------
def registry_objects(spec: DeploySpec, opts: K8sOptions) -> list[Manifest]:
    pvc_template: dict[str, Any] = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": opts.registry_size}}},
    }
    if opts.storage_class:
        pvc_template["spec"]["storageClassName"] = opts.storage_class
    container = {
        "name": "postgres",
        "image": opts.postgres_image,
        "env": [
            _env("POSTGRES_USER", "app"),
            _secret_env("POSTGRES_PASSWORD", *REGISTRY_SECRET),
            _env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ],
        "ports": [_port("postgres", REGISTRY_PORT)],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "app", "-d", "postgres"]},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "app", "-d", "postgres"]},
                          "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                         {"name": "run", "mountPath": "/var/run/postgresql"}, TMP_MOUNT],
        "securityContext": _container_security(),
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta("triton-registry", "registry", opts),
            "spec": {
                "serviceName": "triton-registry",
                "replicas": 1,
                "selector": {"matchLabels": _selector("registry")},
                "template": {
                    "metadata": {"labels": _labels("registry", opts)},
                    "spec": {
                        "serviceAccountName": "triton-deploy-kit",
                        "automountServiceAccountToken": False,
                        "securityContext": _pod_security(POSTGRES_UID),
                        "containers": [container],
                        "volumes": [{"name": "run", "emptyDir": {}}, TMP_VOLUME],
                    },
                },
                "volumeClaimTemplates": [pvc_template],
            },
        },
        _service("triton-registry", "registry", opts, [("postgres", REGISTRY_PORT)]),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("triton-registry", "registry", opts),
            "spec": {
                "podSelector": {"matchLabels": _selector("registry")},
                "policyTypes": ["Ingress"],
                # The lifecycle tools, the drift monitor and, with monitoring on, the Triton pods (their
                # models write the prediction log) talk to the registry's PostgreSQL; nothing else.
                "ingress": [{"from": [{"podSelector": {"matchLabels": _selector(c)}} for c in registry_clients(spec)],
                             "ports": [{"protocol": "TCP", "port": REGISTRY_PORT}]}],
            },
        },
    ]


def registry_clients(spec: DeploySpec) -> list[str]:
    """The components admitted to the registry."""
    return ["lifecycle", "monitor"] + (["triton"] if spec.monitoring.enabled else [])


def lifecycle_db_env() -> list[dict[str, Any]]:
    return [
        registry_password_env(),
        # $(REGISTRY_PASSWORD) is expanded by the kubelet from the variable above.
        _env("TRITON_LIFECYCLE_DB", REGISTRY_URL),
    ]


# -- the drift monitor (issue 13: triton-monitor serve) ------------------------------------------------
def monitor_objects(opts: K8sOptions) -> list[Manifest]:
    """`triton-monitor serve`: reads the prediction log from the registry's PostgreSQL
    ($TDK_MONITORING_DATABASE_URL), the versions' roles from the registry ($TRITON_LIFECYCLE_DB), each
    version's reference.json from the shared repository; serves /metrics (Prometheus, job
    drift-monitor), POST /labels and /health on MONITOR_PORT, to Prometheus and the lifecycle pod only."""
    container = {
        "name": "monitor",
        "image": opts.image,
        "command": ["triton-monitor"],
        "args": ["serve", "--host=0.0.0.0", f"--port={MONITOR_PORT}", f"--spec={opts.spec_file}",
                 f"--repository={REPOSITORY}"],
        "workingDir": PROJECT_DIR,
        "env": [*lifecycle_db_env(), _env(MONITORING_DB_ENV, REGISTRY_URL), _env("HOME", "/tmp")],
        "ports": [_port("monitor", MONITOR_PORT)],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "readinessProbe": _http_probe("/health", "monitor", 5, 3),
        "livenessProbe": _http_probe("/health", "monitor", 10, 6, timeout=5),
        "volumeMounts": [{"name": "store", "mountPath": STORE, "readOnly": True}, TMP_MOUNT],
        "securityContext": _container_security(),
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta("triton-monitor", "monitor", opts),
            "spec": {
                "replicas": 1,  # one writer of the labels' outcomes and one set of gauges
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": _selector("monitor")},
                "template": {
                    "metadata": {"labels": _labels("monitor", opts)},
                    "spec": {
                        "serviceAccountName": "triton-deploy-kit",
                        "automountServiceAccountToken": False,
                        "securityContext": _pod_security(),
                        "containers": [container],
                        "volumes": [{"name": "store", "persistentVolumeClaim": {
                            "claimName": "triton-model-repository", "readOnly": True}}, TMP_VOLUME],
                    },
                },
            },
        },
        _service("triton-monitor", "monitor", opts, [("monitor", MONITOR_PORT)],
                 {JOB_LABEL: "drift-monitor", SCRAPE_LABEL: "true"}),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("triton-monitor", "monitor", opts),
            "spec": {
                "podSelector": {"matchLabels": _selector("monitor")},
                "policyTypes": ["Ingress"],
                # Prometheus (/metrics) and the lifecycle pod (POST /labels, `triton-repo watch
                # --monitor-url`); not the rest of the namespace, not the clients.
                "ingress": [{"from": [{"podSelector": {"matchLabels": _selector("lifecycle")}}, _monitoring_ns(opts)],
                             "ports": [{"protocol": "TCP", "port": MONITOR_PORT}]}],
            },
        },
    ]


def lifecycle_objects(opts: K8sOptions) -> list[Manifest]:
    """A long-running pod with the project (triton-repo), the shared repository and the registry: the
    lifecycle verbs run in it (`kubectl exec deploy/triton-lifecycle -- triton-repo canary ...`)."""
    container = {
        "name": "tools",
        "image": opts.image,
        "command": ["sleep", "infinity"],
        "workingDir": PROJECT_DIR,
        "env": [_secret_env("TRITON_ADMIN_KEY", *ADMIN_SECRET), *lifecycle_db_env(), _env("HOME", "/tmp")],
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        "volumeMounts": [{"name": "store", "mountPath": STORE}, TMP_MOUNT],
        "securityContext": _container_security(),
    }
    return [{
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("triton-lifecycle", "lifecycle", opts),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _selector("lifecycle")},
            "template": {
                "metadata": {"labels": _labels("lifecycle", opts)},
                "spec": {
                    "serviceAccountName": "triton-deploy-kit",
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": "triton-model-repository"}},
                                TMP_VOLUME],
                },
            },
        },
    }]


# -- monitoring ----------------------------------------------------------------------------------------
def rule_groups(prometheus_dir: Path) -> list[dict[str, Any]]:
    """The compose stacks' rule groups, alerts then recording rules: the one source of truth."""
    groups: list[dict[str, Any]] = []
    for name in ("alerts.yml", "recording.yml"):
        groups += yaml.safe_load((prometheus_dir / name).read_text())["groups"]
    return groups


def monitoring_objects(flavor: FlavorName, opts: K8sOptions, prometheus_dir: Path) -> list[Manifest]:
    # Each endpoint scrapes the selected Services that have a port of its name: triton-metrics,
    # triton-healer (the stub watchdog, both flavors) and triton-monitor (the drift monitor).
    endpoints = [{"port": name, "path": "/metrics", "interval": "5s"} for name in ("metrics", "health", "monitor")]
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _meta("triton", "triton", opts),
            "spec": {
                # job="triton", "triton-healer" and "drift-monitor", as in compose: the rules select on it.
                "jobLabel": JOB_LABEL,
                "selector": {"matchLabels": {"app.kubernetes.io/part-of": PART_OF, SCRAPE_LABEL: "true"}},
                "namespaceSelector": {"matchNames": [opts.namespace]},
                "endpoints": endpoints,
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": _meta("triton", "triton", opts),
            "spec": {"groups": rule_groups(prometheus_dir)},
        },
    ]


# -- autoscaling -----------------------------------------------------------------------------------------
def hpa_behavior() -> dict[str, Any]:
    """Scale up at once (doubling, or 4 pods, per minute), down slowly (5 min window, one pod a minute).

    Queue time and pending requests grow steeply near saturation, so the HPA's proportional rule
    overshoots on the way down: in `triton-repo capacity`'s simulation, halving (and 10 %) per minute
    went below the need and scaled up again, over and over; one pod a minute settles."""
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 60},
            {"type": "Pods", "value": 4, "periodSeconds": 60},
        ]},
        "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": 1, "periodSeconds": 60},
        ]},
    }


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter rules: the recorded per-pod series as custom metrics of the pods."""
    resources = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    return {"rules": [
        {
            "seriesQuery": f'{series}{{namespace!="",pod!=""}}',
            "resources": resources,
            "name": {"matches": f"^{series}$", "as": metric},
            "metricsQuery": "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
        }
        for series, metric in ((QUEUE_SERIES, QUEUE_METRIC), (PENDING_SERIES, PENDING_METRIC))
    ]}


def hpa_objects(opts: K8sOptions) -> list[Manifest]:
    return [
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _meta("triton", "triton", opts),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"},
                "minReplicas": opts.min_replicas,
                "maxReplicas": opts.max_replicas,
                "metrics": [
                    {"type": "Pods", "pods": {"metric": {"name": name},
                                              "target": {"type": "AverageValue", "averageValue": str(value)}}}
                    for name, value in ((QUEUE_METRIC, opts.queue_target_us), (PENDING_METRIC, opts.pending_target))
                ],
                "behavior": hpa_behavior(),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus-adapter-triton", "namespace": opts.monitoring_namespace,
                         "labels": _labels("autoscaling", opts)},
            "data": {"config.yaml": yaml.dump(adapter_rules(), Dumper=_Dumper, sort_keys=False)},
        },
    ]


def keda_queries(opts: K8sOptions) -> dict[str, str]:
    return {
        # An average over the pods, compared with the target as a plain value (metricType Value:
        # desired = ceil(replicas * value / threshold)), the same arithmetic as the HPA's AverageValue
        # on the per-pod metric.
        "queue-time": f'avg({QUEUE_SERIES}{{namespace="{opts.namespace}"}})',
        # A total over the pods, divided by the replicas (AverageValue).
        "pending-requests": f'sum({PENDING_SERIES}{{namespace="{opts.namespace}"}})',
    }


def keda_objects(opts: K8sOptions) -> list[Manifest]:
    q = keda_queries(opts)
    return [{
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta("triton", "triton", opts),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"},
            "minReplicaCount": opts.min_replicas,
            "maxReplicaCount": opts.max_replicas,
            "pollingInterval": 15,
            "advanced": {"horizontalPodAutoscalerConfig": {"name": "triton-keda", "behavior": hpa_behavior()}},
            "triggers": [
                {"type": "prometheus", "name": "queue-time", "metricType": "Value",
                 "metadata": {"serverAddress": opts.prometheus_url, "query": q["queue-time"],
                              "threshold": str(opts.queue_target_us), "ignoreNullValues": "false"}},
                {"type": "prometheus", "name": "pending-requests", "metricType": "AverageValue",
                 "metadata": {"serverAddress": opts.prometheus_url, "query": q["pending-requests"],
                              "threshold": str(opts.pending_target), "ignoreNullValues": "false"}},
            ],
        },
    }]


# -- distributed load ----------------------------------------------------------------------------------
def locust_objects(opts: K8sOptions) -> list[Manifest]:
    common_env = [
        _env("LOCUST_LOCUSTFILE", "loadtest/locustfile.py"),
        _env("LOCUST_HOST", f"http://triton:{HTTP}"),
        _env("LOCUST_GRPC_HOST", f"triton:{GRPC}"),
        _env("HOME", "/tmp"),
    ]

    def job(name: str, env: list[dict[str, Any]], parallelism: int, ports: list[dict[str, Any]]) -> Manifest:
        container = {
            "name": "locust", "image": opts.image, "command": ["locust"], "workingDir": PROJECT_DIR,
            "env": common_env + env, "ports": ports,
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "volumeMounts": [TMP_MOUNT], "securityContext": _container_security(),
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(name, name, opts),
            "spec": {
                "parallelism": parallelism, "completions": parallelism, "backoffLimit": 0,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": _labels(name, opts)},
                    "spec": {"restartPolicy": "Never", "serviceAccountName": "triton-deploy-kit",
                             "automountServiceAccountToken": False, "securityContext": _pod_security(),
                             "containers": [container], "volumes": [TMP_VOLUME]},
                },
            },
        }

    master_env = [
        _env("LOCUST_MODE_MASTER", "true"), _env("LOCUST_HEADLESS", "true"),
        _env("LOCUST_EXPECT_WORKERS", str(opts.locust_workers)), _env("LOCUST_USERS", "64"),
        _env("LOCUST_SPAWN_RATE", "8"), _env("LOCUST_RUN_TIME", "10m"),
        _env("LOCUST_MASTER_BIND_PORT", str(LOCUST_PORT)),
    ]
    worker_env = [_env("LOCUST_MODE_WORKER", "true"), _env("LOCUST_MASTER_NODE_HOST", "locust-master"),
                  _env("LOCUST_MASTER_NODE_PORT", str(LOCUST_PORT))]
    return [
        _service("locust-master", "locust-master", opts, [("master", LOCUST_PORT)]),
        job("locust-master", master_env, 1, [_port("master", LOCUST_PORT)]),
        job("locust-worker", worker_env, opts.locust_workers, []),
    ]


# -- everything, by file -------------------------------------------------------------------------------
HEADER = ("# Generated by `triton-repo k8s` from {spec} ({flavor} flavor); do not edit: change the spec or the\n"
          "# generator (build_tools/k8s/) and regenerate. Validated offline: build_tools/k8s/validate.py.\n")


def manifests(spec: DeploySpec, flavor: FlavorName, opts: K8sOptions,
              prometheus_dir: Path) -> dict[str, list[Manifest]]:
    """Relative file path -> its documents. Files under autoscaling/ and load/ are applied on their own:
    one autoscaler (HPA or KEDA, never both on one Deployment), and load only when wanted."""
    namespace: Manifest = {"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/part-of": PART_OF}}}
    return {
        "namespace.yaml": [namespace],
        "triton.yaml": triton_objects(spec, flavor, opts),
        "registry.yaml": registry_objects(spec, opts),
        "lifecycle.yaml": lifecycle_objects(opts),
        "monitor.yaml": monitor_objects(opts),
        "monitoring.yaml": monitoring_objects(flavor, opts, prometheus_dir),
        "autoscaling/hpa.yaml": hpa_objects(opts),
        "autoscaling/keda.yaml": keda_objects(opts),
        "load/locust.yaml": locust_objects(opts),
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors for shared dicts, scripts as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(docs: list[Manifest], spec_name: str, flavor: FlavorName) -> str:
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in docs)
    return HEADER.format(spec=spec_name, flavor=flavor) + "---\n" + body
