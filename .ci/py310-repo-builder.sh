#!/usr/bin/env bash
# The repo-builder job on the serving image's Python: tritonserver:24.10-py3 ships Python 3.10, and the
# repo-builder container (compose/docker-compose.yml) installs only the project's core there. This job
# does the same in a Python 3.10 virtualenv, then runs
#   1. `triton-repo build-repo --flavor ngc` (the repo-builder's command), and checks that the configs it
#      writes are byte-identical to the committed ones (what Python 3.11+ generates);
#   2. the plan step's tests (builder, trtexec against the fake trtexec, gate, lock, profile, logger,
#      the serving-image contract).
# Python 3.10 is found on PATH or in pyenv (how these machines provide it); with pyenv and no 3.10,
# `pyenv install` is tried. No Python 3.10 at all is an error: this job is the proof the image path works.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

VENV=${PY310_VENV:-build/ci-py310}

is_310() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_python310() {
  local candidate root
  if candidate=$(command -v python3.10) && is_310 "$candidate"; then echo "$candidate"; return 0; fi
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for candidate in "$root"/versions/3.10*/bin/python3.10; do
      if [[ -x $candidate ]] && is_310 "$candidate"; then echo "$candidate"; return 0; fi
    done
    echo "py310: no Python 3.10 in pyenv; trying 'pyenv install 3.10'" >&2
    if pyenv install -s 3.10 >&2; then
      for candidate in "$root"/versions/3.10*/bin/python3.10; do
        if [[ -x $candidate ]] && is_310 "$candidate"; then echo "$candidate"; return 0; fi
      done
    fi
  fi
  return 1
}

if ! py=$(find_python310); then
  echo "py310: no Python 3.10 found (python3.10 on PATH, or pyenv's versions/3.10.*); it is needed to prove the" \
       "repo-builder runs on the serving image's Python" >&2
  exit 1
fi
echo "py310: using $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"

rm -rf "$VENV"
"$py" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# Exactly the repo-builder's install: the project's core from a copy of the checkout (so no build/ or
# *.egg-info lands in it), with its own dependencies and no extras.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C . --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./model_repository -cf - . | tar -C "$src" -xf -
"$VENV/bin/python" -m pip install --quiet "$src"
"$VENV/bin/python" -m pip list --format=freeze | sed 's/^/py310:   /'

echo "py310: triton-repo build-repo --flavor ngc"
"$VENV/bin/triton-repo" build-repo --flavor ngc
if [[ -n "$(git status --porcelain -- model_repository)" ]]; then
  git status --porcelain -- model_repository
  echo "py310: build-repo on Python 3.10 wrote a different ngc repository than the committed one" >&2
  exit 1
fi

# The test runner is not part of the repo-builder's install; it is added only here.
"$VENV/bin/python" -m pip install --quiet "pytest>=8" "pytest-timeout>=2.2"
echo "py310: the plan step's tests"
"$VENV/bin/python" -m pytest -p no:cacheprovider \
  tests/unit/test_tensorrt_trtexec.py tests/unit/test_tensorrt_gate.py tests/unit/test_tensorrt_ngc.py \
  tests/unit/test_tensorrt_lock.py tests/unit/test_tensorrt_profile.py tests/unit/test_tensorrt_logger.py \
  tests/unit/test_serving_image.py tests/unit/test_monitoring_vendor.py
