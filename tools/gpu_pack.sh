#!/usr/bin/env bash
# Pack what the GPU host lacks into .gpu/ (git-ignored), to be carried along with the working tree
# (64 MiB in all): cp312 wheels of the client-side packages and numpy 1.26 (the host has numpy 2, which
# the embedded Triton's Python-backend stub cannot use), the tritonserver tree of the nvidia-pytriton
# wheel trimmed to what Python 3.12 needs, and perf_analyzer with libb64 and libcudart 12.
#
#   bash tools/gpu_pack.sh        (needs `make install` and loadtest/install_perf_analyzer.sh first)
#
# Versions are the ones installed in .venv, so the GPU host runs what the tests ran here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${VENV:-$ROOT/.venv}/bin/python"
PACK="${GPU_PACK:-$ROOT/.gpu}"
log() { echo "gpu_pack: $*" >&2; }
[[ -x "$PY" ]] || { log "no $PY; run make install first"; exit 1; }

rm -rf "$PACK"; mkdir -p "$PACK/wheels"
# The client side of the project, minus what the host's image already has (torch, grpcio, protobuf,
# pyyaml, pillow, matplotlib, tqdm, onnx, onnxruntime, requests, urllib3, certifi).
NAMES=(tritonclient geventhttpclient gevent greenlet zope.event zope.interface python-rapidjson brotli
       pydantic pydantic-core annotated-types typing-inspection mlxtend)
reqs=("numpy==1.26.4")
for n in "${NAMES[@]}"; do
    v="$("$PY" -m pip show "$n" 2>/dev/null | awk '/^Version:/{print $2}')"
    [[ -n "$v" ]] || { log "$n is not installed in the venv"; exit 1; }
    reqs+=("$n==$v")
done
log "downloading cp312 wheels: ${reqs[*]}"
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${platforms[@]}" -d "$PACK/wheels" "${reqs[@]}"

# The tritonserver tree: binary, python backend, the 3.12 stub, the response cache and the bundled libs
# (the bundled libpython3.13 serves the 3.13 stub only).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
log "packing the tritonserver tree from $SITE"
tar -C "$SITE" -cJf "$PACK/triton.tar.xz" \
    --exclude='pytriton/tritonserver/python_backend_stubs/3.8' --exclude='pytriton/tritonserver/python_backend_stubs/3.9' \
    --exclude='pytriton/tritonserver/python_backend_stubs/3.10' --exclude='pytriton/tritonserver/python_backend_stubs/3.11' \
    --exclude='pytriton/tritonserver/python_backend_stubs/3.13' --exclude='nvidia_pytriton.libs/libpython3*' \
    pytriton/__init__.py pytriton/tritonserver nvidia_pytriton.libs

# perf_analyzer (from the tritonclient 2.51.0 wheel) and the two libraries it links.
PA="$(bash loadtest/install_perf_analyzer.sh | tail -n1)"
REAL="$(dirname "$PA")/perf_analyzer.bin"
stage="$(mktemp -d)"; trap 'rm -rf "$stage"' EXIT
cp "$REAL" "$stage/perf_analyzer.bin"
cp "$(/sbin/ldconfig -p | awk '/libb64.so.0d/{print $NF; exit}')" "$stage/libb64.so.0d"
cudart="$(sed -n 's/^export LD_LIBRARY_PATH="\([^$"]*\).*/\1/p' "$PA")"
cp "$cudart/libcudart.so.12" "$stage/libcudart.so.12"
tar -C "$stage" -cJf "$PACK/perf_analyzer.tar.xz" .

du -b "$PACK"/wheels/* "$PACK"/*.tar.xz | sort -n >&2
total=$(du -sb "$PACK" | cut -f1)
log "pack: $((total / 1024 / 1024)) MiB in $PACK (the working tree and the pack must stay under 64 MiB)"
echo "$PACK"
