#!/usr/bin/env bash
# Install the real perf_analyzer into the project's virtualenv: `.venv/bin/perf_analyzer`, on PATH
# whenever the virtualenv is active (the binary itself goes to .venv/lib/perf_analyzer/).
#
# Newer tritonclient wheels no longer ship perf_analyzer, and the `perf-analyzer` package on the
# registry is an empty placeholder; the tritonclient 2.51.0 manylinux wheel (same release as the
# embedded server) carries the binary. It needs two libraries:
#   * libb64.so.0d   - Debian package libb64-0d (installed with apt-get when missing, as root)
#   * libcudart.so.12 - pip package nvidia-cuda-runtime-cu12 (installed into the venv); the wrapper
#     script we write puts its lib folder on LD_LIBRARY_PATH.
# Idempotent: a second run only checks. Prints where it put the binary on its last line.
#
# Usage: loadtest/install_perf_analyzer.sh            (or `make perf-analyzer`; VENV=.venv by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
# Absolute, since the wrapper written below must work from any folder.
[[ -d "$VENV" ]] && VENV="$(cd "$VENV" && pwd)"
DEST="${DEST:-$VENV/lib/perf_analyzer}"
TRITONCLIENT_VERSION="${PERF_ANALYZER_TRITONCLIENT_VERSION:-2.51.0}"
PY="$VENV/bin/python"
REAL="$DEST/perf_analyzer.bin"
WRAPPER="${WRAPPER:-$VENV/bin/perf_analyzer}"

log() { echo "install_perf_analyzer: $*" >&2; }

[[ -x "$PY" ]] || { log "no Python at $PY; run 'make install' first (or set VENV)"; exit 1; }
[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || { log "the wheel's binary is for Linux x86_64 only"; exit 1; }
mkdir -p "$DEST"

# 1. libb64 (the binary links libb64.so.0d).
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d'; then
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
        log "installing libb64-0d with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q libb64-0d >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
    else
        log "libb64.so.0d is missing; install the Debian package libb64-0d (as root)"; exit 1
    fi
fi

# 2. libcudart.so.12 (linked even on machines without a GPU).
cudart_dir() {
    "$PY" - <<'PYEOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("nvidia")
for loc in (spec.submodule_search_locations or []) if spec else []:
    lib = pathlib.Path(loc) / "cuda_runtime" / "lib"
    if (lib / "libcudart.so.12").exists():
        print(lib); sys.exit(0)
sys.exit(1)
PYEOF
}
if ! CUDART="$(cudart_dir)"; then
    log "installing nvidia-cuda-runtime-cu12 into $VENV"
    "$PY" -m pip install --quiet 'nvidia-cuda-runtime-cu12>=12,<13'
    CUDART="$(cudart_dir)"
fi

# 3. The binary, taken from the tritonclient wheel without installing that wheel.
if [[ ! -x "$REAL" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "downloading tritonclient==$TRITONCLIENT_VERSION (manylinux x86_64) to extract perf_analyzer"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --dest "$tmp" "tritonclient==$TRITONCLIENT_VERSION"
    wheel="$(ls "$tmp"/tritonclient-*.whl | head -n1)"
    "$PY" - "$wheel" "$REAL" <<'PYEOF'
import shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/perf_analyzer")]
    if not names:
        sys.exit(f"{wheel}: no bin/perf_analyzer inside")
    with z.open(names[0]) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
PYEOF
    chmod 0755 "$REAL"
fi

# 4. A wrapper that finds libcudart without touching the caller's environment.
cat >"$WRAPPER" <<WRAPEOF
#!/usr/bin/env bash
# Written by loadtest/install_perf_analyzer.sh: runs perf_analyzer with the CUDA runtime on the path.
export LD_LIBRARY_PATH="$CUDART\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$REAL" "\$@"
WRAPEOF
chmod 0755 "$WRAPPER"

if ! "$WRAPPER" --help >/dev/null 2>&1 && ! "$WRAPPER" --version >/dev/null 2>&1; then
    missing="$(LD_LIBRARY_PATH="$CUDART" ldd "$REAL" | grep 'not found' || true)"
    log "perf_analyzer does not start${missing:+; missing libraries: $missing}"
    exit 1
fi
log "ok"
echo "$WRAPPER"
