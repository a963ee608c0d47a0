#!/usr/bin/env bash
# Run benchmarks on a machine that has Python 3.12 but no Ray and no internet (the GPU box).
#
#   bash scripts/device-bench.sh python3 benchmarks/cpu_fan_out.py --quick
#   bash scripts/device-bench.sh bash -c 'python3 benchmarks/run.py --quick; python3 ...'
#
# Run from the repo root. Ray and the few wheels the box lacks come from .devbundle/ (ignored
# via .git/info/exclude, so only a copy that names it explicitly carries it). Output also
# goes to ${OUT:-/tmp}/device-bench.log so it comes back with $OUT.
#
# Building .devbundle/ (on a machine that reaches PyPI): `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 ...` the ray
# wheel of .venv's version, unzip it, delete ray/jars, rllib, serve, tune, train, llm, data
# and dashboard/client (keep the rest of ray/dashboard: ray.init starts its agent), pack it
# as .devbundle/ray.tar.xz (xz -9, ~20 MB), and put cp312 wheels of lmdb, structlog,
# starlette, uvicorn, jsonschema, jsonschema-specifications, referencing, rpds-py, attrs,
# h11 and typing-extensions in .devbundle/wheels/.
set -euo pipefail

SITE=/tmp/site
BUNDLE=.devbundle
LOG="${OUT:-/tmp}/device-bench.log"
mkdir -p "$(dirname "$LOG")"

[ -f "$BUNDLE/ray.tar.xz" ] || { echo "device-bench: no $BUNDLE/ray.tar.xz (run from the repo root)" >&2; exit 2; }

{
    # A warm machine keeps /tmp: reuse the unpacked site unless the bundle changed.
    stamp=$(cat "$BUNDLE/ray.tar.xz" "$BUNDLE"/wheels/*.whl | cksum)
    if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$SITE" && mkdir -p "$SITE"
        tar -xJf "$BUNDLE/ray.tar.xz" -C "$SITE"
        # --no-deps/--no-index: everything else is already on the box, and it is offline.
        if python3 -m pip --version >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$SITE" "$BUNDLE"/wheels/*.whl
        else
            # A venv made without pip: a wheel is a zip laid out as site-packages.
            for whl in "$BUNDLE"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$SITE"; done
        fi
        echo "$stamp" > "$SITE/.stamp"
    fi

    # PYTHONPATH, not a .pth: Ray's worker processes inherit the environment.
    export PYTHONPATH="$SITE:$PWD"
    export PYTHONUNBUFFERED=1

    echo "== $(date -u +%FT%TZ) $*"
    echo "nproc: $(nproc)"
    nvidia-smi -L || true
    echo "python: $(python3 --version 2>&1) ($(command -v python3))"
    echo "ray: $(python3 -c 'import ray; print(ray.__version__, ray.__file__)')"

    "$@"
} 2>&1 | tee -a "$LOG"
