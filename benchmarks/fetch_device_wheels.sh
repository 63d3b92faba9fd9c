#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU machine of benchmarks/device_check.sh lacks, to be carried there:
#
#   - the wheels of the Python packages the pipeline imports that its image does not hold: hydra-core, omegaconf
#     and their antlr4-python3-runtime (it has torch, torchvision, Lightning, timm, scikit-learn, numpy, PyYAML,
#     packaging, pandas, matplotlib, scipy, pillow, tqdm, torchmetrics, pytest), at the versions requirements-cpu.txt
#     pins, for CPython 3.12 on manylinux x86-64 (pure-Python wheels are py3-none-any; a package published only as
#     a source archive, as antlr4-python3-runtime 4.9.3 is, is built here into a pure-Python wheel);
#   - the four original Fashion-MNIST files (.whl/fashion-mnist/, from Debian's dataset-fashion-mnist package,
#     about 30 MB), which device_check.sh's Fashion-MNIST step reads (that machine has no network).
#
#   bash benchmarks/fetch_device_wheels.sh            # then carry ".whl" in the device call
#   bash benchmarks/fetch_device_wheels.sh --no-data  # the wheels only
#
# Needs pip and network access here. Running it again replaces the wheels (one version of each: two would stop
# the install there).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.whl
PYTHON=${PYTHON:-python3}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime)
with_data=1
case "${1:-}" in
    --no-data) with_data=0 ;;
    "") ;;
    *)
        echo "usage: bash benchmarks/fetch_device_wheels.sh [--no-data]" >&2
        exit 2
        ;;
esac

# the version requirements-cpu.txt pins (pip-compile's lower-case names)
pin() {
    local line
    line=$(grep -iE "^$1==" requirements-cpu.txt | head -1)
    if [[ -z "$line" ]]; then
        echo "error: $1 has no pin in requirements-cpu.txt; pin it there first (see the header of requirements.in)" >&2
        exit 1
    fi
    echo "${line#*==}" | cut -d' ' -f1
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for name in "${PACKAGES[@]}"; do
    version=$(pin "$name")
    echo "== $name==$version"
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$name==$version" 2>/dev/null; then
        echo "   no wheel for CPython 3.12 on manylinux: building one from the source archive"
        "$PYTHON" -m pip wheel -q --no-deps --no-binary "$name" -w "$DEST" "$name==$version"
    fi
done
# only pure-Python or CPython 3.12 manylinux wheels travel: a wheel built here for this interpreter would not install
for wheel in "$DEST"/*.whl; do
    case "$wheel" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-*manylinux*x86_64.whl) ;;
        *)
            echo "error: $wheel is neither pure Python nor for CPython 3.12 on manylinux x86-64" >&2
            exit 1
            ;;
    esac
done
ls -l "$DEST"/*.whl

if [[ $with_data == 1 ]]; then
    files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
    for f in "${files[@]}"; do
        if [[ ! -f "$FMNIST/$f" ]]; then
            echo "error: $FMNIST/$f is missing: install Debian's dataset-fashion-mnist, or set FMNIST=<folder with" \
                "the four files>, or use --no-data" >&2
            exit 1
        fi
    done
    mkdir -p "$DEST/fashion-mnist"
    for f in "${files[@]}"; do
        cp "$FMNIST/$f" "$DEST/fashion-mnist/$f"
    done
    echo "Fashion-MNIST: $(du -sh "$DEST/fashion-mnist" | cut -f1) in $DEST/fashion-mnist"
fi
echo "carried size: $(du -sh "$DEST" | cut -f1) (the working tree and carried paths travel within 64 MiB)"
