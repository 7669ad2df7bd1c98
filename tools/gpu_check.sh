#!/usr/bin/env bash
# The GPU check, one command on the GPU host: prepares a Python environment from the carried pack
# (tools/gpu_pack.sh made it), then runs tools/gpu_check.py, which writes everything to one folder.
#
#   bash tools/gpu_check.sh gpu     # on the GPU host; results in $OUT (else build/gpu_check)
#   bash tools/gpu_check.sh cpu     # the dry run on a CPU machine: torch model on KIND_CPU
#
# The host has Python 3.12 with torch (CUDA) and numpy 2; the embedded Triton's Python-backend stub needs
# numpy 1.26 and the project's client packages. So: a venv whose own site-packages (carried wheels,
# numpy 1.26 first) come before the host Python's (torch), the trimmed tritonserver tree unpacked into
# it, and perf_analyzer with its two libraries. Without a pack, the project's .venv is used as it is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE="${1:-gpu}"
RESULTS="${OUT:-$ROOT/build/gpu_check}"
PACK="${GPU_PACK:-$ROOT/.gpu}"
ENV_DIR="${GPU_ENV:-$ROOT/build/gpu_env}"
BASE_PY="${BASE_PY:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
t0=$(date +%s)
log() { echo "gpu_check.sh [+$(( $(date +%s) - t0 ))s] $*" >&2; }

if [[ "$DEVICE" == gpu ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

if [[ -d "$PACK/wheels" ]]; then
    log "environment from the pack in $PACK"
    rm -rf "$ENV_DIR"
    # No ensurepip needed: the host Python's pip installs into the venv's site-packages.
    "$BASE_PY" -m venv --without-pip "$ENV_DIR"
    PY="$ENV_DIR/bin/python"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$BASE_PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$SITE" "$PACK"/wheels/*.whl
    # The host Python's packages (torch, onnxruntime, grpcio, ...) after the venv's own.
    "$BASE_PY" -c 'import site; print("\n".join(site.getsitepackages()))' >"$SITE/zz_host_python.pth"
    echo "$ROOT" >"$SITE/triton_deploy_kit.pth"
    tar -xJf "$PACK/triton.tar.xz" -C "$SITE"
    mkdir -p "$ENV_DIR/perf_analyzer"
    tar -xJf "$PACK/perf_analyzer.tar.xz" -C "$ENV_DIR/perf_analyzer"
    cat >"$ENV_DIR/bin/perf_analyzer" <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$ENV_DIR/perf_analyzer\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$ENV_DIR/perf_analyzer/perf_analyzer.bin" "\$@"
WRAP
    chmod +x "$ENV_DIR/bin/perf_analyzer"
    export PERF_ANALYZER="$ENV_DIR/bin/perf_analyzer"
else
    log "no pack in $PACK: using the project's .venv"
    PY="$ROOT/.venv/bin/python"
    [[ -x "$PY" ]] || { log "no $PY; run make install (or tools/gpu_pack.sh for the GPU host)"; exit 1; }
    [[ -n "${PERF_ANALYZER:-}" ]] || PERF_ANALYZER="$(bash loadtest/install_perf_analyzer.sh | tail -n1)"
    export PERF_ANALYZER
fi

"$PY" - <<'PYEOF'
import numpy, torch
print(f"python ok: numpy {numpy.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")
PYEOF
"$PERF_ANALYZER" --help >/dev/null 2>&1 || "$PERF_ANALYZER" --version >/dev/null 2>&1 || { log "perf_analyzer does not start:"; ldd "$(dirname "$PERF_ANALYZER")/../perf_analyzer/perf_analyzer.bin" 2>/dev/null | grep 'not found' || true; exit 1; }

log "running tools/gpu_check.py --device $DEVICE"
# The stub finds the venv's packages through python3 first on PATH (the harness puts sys.executable's bin first).
set +e
PATH="$(dirname "$PY"):$PATH" "$PY" -m tools.gpu_check --out "$RESULTS" --work "$ROOT/build/gpu_work" --device "$DEVICE" "${@:2}" 2>&1 | tee "$RESULTS/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
log "done (exit $rc)"
exit "$rc"
