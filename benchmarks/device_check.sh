#!/usr/bin/env bash
# One device check on one H100/H200, within 8 minutes, every result as JSON under $OUT (docs/performance.md,
# "Device check"):
#
#   setup        hydra/omegaconf from the carried wheels when missing; the repository on PYTHONPATH; card, versions
#   correctness  pytest -m cuda -x over tests/ (CUDA step equivalence in fp32, the no-sync test): junit XML
#   pipeline     python -m benchmarks.pipeline_throughput --size full     -> $OUT/pipeline.json
#   ood          python -m benchmarks.ood_detectors --size full           -> $OUT/ood_detectors.json
#   fmnist       a short Fashion-MNIST study, one process over all its runs -> $OUT/fashion_mnist_*.{json,md}
#
# Each step runs under `timeout` with its own budget (the budgets sum to 7 min 50 s with the kill grace); a step
# that fails or runs out of time is logged and the next one runs. $OUT/device_check.json sums it up (per step:
# command, exit status, wall seconds, the log's last lines; the card, driver, torch and CUDA versions, the date).
# At most 7 files land in $OUT, flat: device_check.json, device_check.log, pytest_cuda.xml, pipeline.json,
# ood_detectors.json, fashion_mnist_study.json, fashion_mnist_report.md.
#
# On the GPU machine, from the repository root, with the wheels and the Fashion-MNIST files carried in .whl/
# (benchmarks/fetch_device_wheels.sh fills it):
#   bash benchmarks/device_check.sh
# Here, the same sequence on the CPU at tiny sizes into a temporary folder (what the tests of this script run):
#   bash benchmarks/device_check.sh --dry-run          # = DEVICE=cpu SIZE=tiny OUT=$(mktemp -d)
#
# Environment: DEVICE (cuda), SIZE (full; tiny for the CPU), OUT (required unless --dry-run), PYTHON (python3),
# FMNIST_SOURCE (.whl/fashion-mnist, else /usr/share/datasets/fashion-mnist), WHEELS (.whl),
# BUDGET_SCALE (1: multiplies every step's budget, e.g. 3 on a slow CPU).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

if [[ "${1:-}" == "--dry-run" ]]; then
    DEVICE=cpu
    SIZE=tiny
    OUT=$(mktemp -d /tmp/device_check.XXXXXX)
    BUDGET_SCALE=${BUDGET_SCALE:-4}
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash benchmarks/device_check.sh [--dry-run]" >&2
    exit 2
fi
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
BUDGET_SCALE=${BUDGET_SCALE:-1}
if [[ -z "${OUT:-}" ]]; then
    echo "error: OUT is not set: give the folder for the results (OUT=<dir> bash $0), or use --dry-run" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/device_check_work.XXXXXX)
LOG=$OUT/device_check.log
STEPS=$WORK/steps.tsv
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1

export DEVICE SIZE PYTHON WHEELS OUT WORK
# per-step budgets in seconds (on one H100/H200); each gets KILL_GRACE more to die after its TERM
declare -A BUDGET=([setup]=20 [correctness]=75 [pipeline]=150 [ood]=70 [fmnist]=130)
KILL_GRACE=5

say() { echo "$*" | tee -a "$LOG"; }

# step NAME CMD...: run CMD under its budget, its output into the log; record name, rc, seconds, command
step() {
    local name=$1
    shift
    local budget=$((BUDGET[$name] * BUDGET_SCALE))
    local log=$WORK/$name.log
    say "=== [$name] budget ${budget} s: $*"
    local start=$SECONDS
    # through bash -c so that a step may be one of the (exported) functions below; timeout signals the whole group
    timeout -k "$KILL_GRACE" "$budget" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    local rc=$?
    local wall=$((SECONDS - start))
    cat "$log" >>"$LOG"
    case $rc in
        0) say "=== [$name] ok, ${wall} s" ;;
        5) say "=== [$name] no test selected (exit 5), ${wall} s" ;;
        124 | 137) say "=== [$name] ran out of its ${budget} s budget (exit $rc), ${wall} s" ;;
        *) say "=== [$name] failed with exit $rc, ${wall} s" ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "$budget" "$*" >>"$STEPS"
    return 0
}

# ------------------------------------------------------------------------------------------------- setup
setup() {
    if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
        if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
            echo "hydra/omegaconf are missing and $WHEELS/ holds no wheels: run benchmarks/fetch_device_wheels.sh" \
                "here and carry $WHEELS"
            return 1
        fi
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl || return 1
    fi
    "$PYTHON" -c "import hydra, omegaconf, src.train.pipeline; print('hydra', hydra.__version__, 'omegaconf', omegaconf.__version__)"
}
export -f setup

# the repository itself (a copy, not pip-installed there), then the carried wheels
export PYTHONPATH=$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
CARD=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-none (no nvidia-smi)}
say "device check: DEVICE=$DEVICE SIZE=$SIZE OUT=$OUT"
say "card, driver: $CARD"
say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "$("$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"
step setup setup

# ------------------------------------------------------------------------------------------- correctness
# exit 5 means no test was selected: no test carries the `cuda` marker in this checkout, or the marker is not
# registered (pytest's --strict-markers would stop at the -m expression with a usage error, exit 4)
correctness() {
    if ! "$PYTHON" -m pytest --markers -p no:cacheprovider 2>/dev/null | grep -q "^@pytest.mark.cuda"; then
        echo "the cuda marker is not registered in this checkout (pyproject.toml): no CUDA test to run"
        return 5
    fi
    "$PYTHON" -m pytest -m cuda -x -q -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" tests
    local rc=$?
    if [[ $rc == 5 ]]; then
        echo "no test carries the cuda marker here (pytest exit 5): nothing to check"
    fi
    return $rc
}
export -f correctness
step correctness correctness

# ---------------------------------------------------------------------------------------------- benchmarks
step pipeline "$PYTHON" -m benchmarks.pipeline_throughput --device "$DEVICE" --size "$SIZE" --output "$OUT/pipeline.json"
step ood "$PYTHON" -m benchmarks.ood_detectors --device "$DEVICE" --size "$SIZE" --output "$OUT/ood_detectors.json"

# ---------------------------------------------------------------------------------------- Fashion-MNIST
FMNIST_SOURCE=${FMNIST_SOURCE:-$WHEELS/fashion-mnist}
if [[ ! -d "$FMNIST_SOURCE" ]]; then
    FMNIST_SOURCE=/usr/share/datasets/fashion-mnist
fi
if [[ "$SIZE" == "tiny" ]]; then
    # seconds on a CPU: 12 images per class, a 64-wide head, 3 steps (words without spaces: split on use)
    FMNIST_ARGS="--train-per-class 12 --test-per-class 10 --ood-count 12 --epochs 1 --finetune-epochs 1
        --batch-size 8 --num-workers 0 --ood-batch-size 64 --mc-samples 2
        --override model.backbone.hidden_dim=64 --override model.backbone.z_dim=64
        --override +train.trainer.limit_train_batches=3 --override +train.trainer.limit_val_batches=2
        --override +finetune.trainer.limit_val_batches=2"
else
    # one protocol (near- and far-OOD), 1,000 training images per class, 2 + 1 epochs: the chain and its phase
    # times, not converged accuracies
    FMNIST_ARGS="--train-per-class 1000 --test-per-class 300 --ood-count 500 --epochs 2 --finetune-epochs 1
        --batch-size 512 --num-workers 4 --ood-batch-size 1024"
fi
fmnist() {
    # shellcheck disable=SC2086  # FMNIST_ARGS: words without spaces
    "$PYTHON" src/experiments/scripts/fashion_mnist_gpu.py --output-root "$WORK/fashion_mnist" \
        --source-dir "$FMNIST_SOURCE" --protocols fashion_mnist_split $FMNIST_ARGS
}
export -f fmnist
export FMNIST_SOURCE FMNIST_ARGS
step fmnist fmnist
# outside the step, so that a study stopped by its budget still leaves its phase times (study.json is rewritten
# after every step of the study)
cp "$WORK/fashion_mnist/study.json" "$OUT/fashion_mnist_study.json" 2>/dev/null
cp "$WORK/fashion_mnist/reports/fashion_mnist_split/ood/ood_report.md" "$OUT/fashion_mnist_report.md" 2>/dev/null

# ------------------------------------------------------------------------------------------------- summary
"$PYTHON" - "$STEPS" "$OUT/device_check.json" "$WORK" "$CARD" "$DEVICE" "$SIZE" <<'EOF' 2>&1 | tee -a "$LOG"
import datetime as dt
import json
import sys
from pathlib import Path

steps_file, summary, work, card, device, size = sys.argv[1:]
try:
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
except ImportError as err:
    versions = {"torch": f"not importable: {err}"}
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, rc, wall, budget, command = line.split("\t", 4)
    log = Path(work, f"{name}.log")
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
    status = {"0": "ok", "5": "no_tests", "124": "timeout", "137": "timeout"}.get(rc, "failed")
    steps.append(
        {"step": name, "status": status, "rc": int(rc), "wall_s": int(wall), "budget_s": int(budget),
         "command": command, "log_tail": tail}
    )
record = {
    "card": card,
    "device": device,
    "size": size,
    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    **versions,
    "steps": steps,
    "total_s": sum(s["wall_s"] for s in steps),
    "all_ok": all(s["status"] in ("ok", "no_tests") for s in steps),
}
tmp = Path(summary + ".tmp")
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(summary)
for s in steps:
    print(f"{s['step']:<12} {s['status']:<8} rc={s['rc']:<4} {s['wall_s']:>4} s / {s['budget_s']} s")
print(f"total {record['total_s']} s; summary: {summary}")
EOF
rm -rf "$WORK"
echo "results in $OUT"
