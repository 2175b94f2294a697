#!/usr/bin/env bash
# The GPU check of issue 17: one run on a CUDA machine, within 8 minutes, that answers everything the CPU
# cannot — the test suite with CUDA visible, `audit demo --device cuda`, and benchmarks/bench_gpu.py.
#
# The machine it was written for (DESIGN.md): one NVIDIA GPU, Python 3.12, torch with CUDA, numpy, scipy,
# typer, pluggy, rich, matplotlib, safetensors, scikit-learn, pytest-xdist, transformers — no duckdb and no
# internet. So the wheels come with the working tree, in wheels/ (ignored by git; fetch them on a machine
# with a package index, see benchmarks/README.md):
#   duckdb-2.0.1-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl   (the catalog; required)
#   pytorch_cka-1.1.3-py3-none-any.whl                                        (the CKA peer; optional)
#   tqdm-4.70.1-py3-none-any.whl                       (pytorch-cka's one import the image may lack)
#
# Usage (from the repository root or anywhere):  bash benchmarks/gpu_check.sh
# Logs go to $OUT (default ./gpu-out): env.txt, install.log, tests.log (+ junit.xml), demo.log,
# demo-results.csv, bench_gpu.log (+ bench_gpu.json) and summary.txt (one line per step: exit code, seconds).
# Each step has its own timeout, so one hang costs that step only; override with T_INSTALL, T_TESTS,
# T_DEMO, T_BENCH (seconds), the interpreter with PYTHON, the wheel folder with WHEELS, the pytest
# arguments with TEST_ARGS, the demo's device with DEMO_DEVICE and bench_gpu's arguments with BENCH_ARGS
# (a dry run of the script itself on a CPU machine: DEMO_DEVICE=cpu BENCH_ARGS="--smoke --device cpu").
# Exit status: 0 when every step exited 0, else 1.

set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
WHEELS="${WHEELS:-$ROOT/wheels}"
T_INSTALL="${T_INSTALL:-45}"   # budget: 45 + 200 + 75 + 150 = 470 s of steps, within 8 minutes
T_TESTS="${T_TESTS:-200}"
T_DEMO="${T_DEMO:-75}"
T_BENCH="${T_BENCH:-150}"
TEST_ARGS="${TEST_ARGS:--n 8 -q -p no:cacheprovider}"
DEMO_DEVICE="${DEMO_DEVICE:-cuda}"
BENCH_ARGS="${BENCH_ARGS:---device cuda}"  # explicit: without CUDA it stops at once, not at CPU speed
: > "$OUT/summary.txt"
FAILED=0

# step NAME LIMIT COMMAND...: runs COMMAND under `timeout`, its output in $OUT/NAME.log, one summary line
step() {
    local name="$1" limit="$2"
    shift 2
    local start rc
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - start ))
    local what="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMED OUT (exit $rc)"
    echo "$name: $what in ${took} s (limit ${limit} s)" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| CUDA", torch.version.cuda, "| cuda available", torch.cuda.is_available(), "| devices",
torch.cuda.device_count(), "| numpy", numpy.__version__)' 2>&1
    echo "CPUs: $(getconf _NPROCESSORS_ONLN)"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

install() {
    set -e
    ls "$WHEELS"/duckdb-*.whl > /dev/null  # required: the catalog
    "$PY" -m pip install --no-index --no-deps "$WHEELS"/duckdb-*.whl
    if ls "$WHEELS"/pytorch_cka-*.whl > /dev/null 2>&1; then
        "$PY" -m pip install --no-index --no-deps "$WHEELS"/pytorch_cka-*.whl
        "$PY" -c 'import tqdm' 2>/dev/null || "$PY" -m pip install --no-index --no-deps "$WHEELS"/tqdm-*.whl
    fi
    "$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT"
    "$PY" -c 'import duckdb, audit, model_audit_probes; print("duckdb", duckdb.__version__, "installed")'
}
export -f install
export PY WHEELS ROOT
if ! step install "$T_INSTALL" bash -c install; then
    echo "install failed: see $OUT/install.log (nothing else can run)" | tee -a "$OUT/summary.txt"
    exit 1
fi

# The whole suite with CUDA visible: the `device` fixture adds a cuda run of every device-sensitive test.
# shellcheck disable=SC2086  # TEST_ARGS is a list of words
step tests "$T_TESTS" "$PY" -m pytest $TEST_ARGS --junitxml="$OUT/junit.xml"
tail -n 3 "$OUT/tests.log" | sed 's/^/  /'

DEMO_DIR="$(mktemp -d)"
# exit 1 means a job or a gate failed: demo.log and demo-results.csv say which
step demo "$T_DEMO" "$PY" -m audit.face.cli demo --device "$DEMO_DEVICE" --dir "$DEMO_DIR/demo"
timeout 60 "$PY" -m audit.face.cli query --format csv --config "$DEMO_DIR/demo/audit.toml" \
    "select probe, status, device, round(duration_s, 2) as seconds, models, datasets, error from results order by created_at" \
    > "$OUT/demo-results.csv" 2>&1 || true
sed 's/^/  /' "$OUT/demo-results.csv" | cut -c1-160 | head -20
rm -rf "$DEMO_DIR"

# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
step bench_gpu "$T_BENCH" "$PY" "$ROOT/benchmarks/bench_gpu.py" $BENCH_ARGS --json "$OUT/bench_gpu.json"
cat "$OUT/bench_gpu.log"

echo "---"
cat "$OUT/summary.txt"
exit "$FAILED"
