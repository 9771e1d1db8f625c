#!/usr/bin/env bash
# The GPU device check on the device machine: install the carried wheels (bench/.wheels, made here
# by `python -m bench.device_check --prepare`) into its Python, offline, then run the check.
#
#   bash bench/device_check.sh [OUTDIR] [bench.device_check options...]
#
# OUTDIR (default: $OUT, else /tmp/device-check) receives device-check.json (the report) and
# device-check.log (everything printed). PYTHON names the interpreter (default python3: on the
# device machine, the one that holds torch). The project is installed editable (its folders map to
# facestream's subpackages, and the checks run from the checkout); setuptools and wheel for that
# build come from bench/.wheels too. Where the interpreter's site-packages cannot be written (or with
# DEVICE_CHECK_VENV=1), everything goes into a virtualenv (DEVICE_CHECK_VENV_DIR, default
# /tmp/device-check-venv) that sees those site-packages.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/device-check}}
[ $# -gt 0 ] && shift
PY=${PYTHON:-python3}
WHEELS=bench/.wheels
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

install() {
    echo "== install ($PY: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.prefix)'))"
    if ! ls $WHEELS/av-*.whl >/dev/null 2>&1; then
        echo "no wheels in $WHEELS: run 'python -m bench.device_check --prepare' first, and carry $WHEELS"
        return 3
    fi
    local site
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 3
    if [ ! -w "$site" ] || [ "${DEVICE_CHECK_VENV:-0}" = 1 ]; then
        local venv=${DEVICE_CHECK_VENV_DIR:-/tmp/device-check-venv} vsite
        echo "a virtualenv in $venv over $site"
        "$PY" -m venv "$venv" || return 3
        vsite=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 3
        echo "$site" > "$vsite/device-check-base.pth"
        PY=$venv/bin/python
    fi
    # Only what is missing: the machine's own packages (torch, numpy, opencv-python-headless, ...)
    # stay as they are.
    "$PY" -m pip install -q --no-index --find-links $WHEELS --no-deps --no-cache-dir --no-compile \
        $WHEELS/av-*.whl $WHEELS/insightface-*.whl || return 3
    "$PY" -m pip install -q --no-index --find-links $WHEELS --no-deps --no-cache-dir -e . || return 3
    "$PY" -c 'import av, insightface, facestream.pipeline, torch
print("installed: PyAV", av.__version__, "insightface", insightface.__version__, "torch", torch.__version__,
      "CUDA", torch.cuda.is_available())' || return 3
}

{
    started=$(date +%s)
    install
    status=$?
    if [ $status -eq 0 ]; then
        echo "== check (install took $(( $(date +%s) - started )) s)"
        "$PY" -m bench.device_check --out "$OUTDIR/device-check.json" "$@"
        status=$?
    fi
    echo "== exit status $status, $(( $(date +%s) - started )) s in all"
    exit $status
} 2>&1 | tee "$OUTDIR/device-check.log"
exit "${PIPESTATUS[0]}"
