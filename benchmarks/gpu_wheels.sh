#!/usr/bin/env bash
# Download, as wheels into .whl/, the Python packages pixgen needs that the GPU machine lacks
# (docs/gpu.md; the device README's recipe): pure-Python or manylinux x86-64 wheels for CPython
# 3.12, --no-deps, each pinned to the version installed in .venv. Prints the total size, which
# travels with every device call and must stay well under its 64 MiB limit.
#
#     bash benchmarks/gpu_wheels.sh            # from the repository root; .whl/ is git-ignored
set -euo pipefail
cd "$(dirname "$0")/.."

PIP="${PIP:-.venv/bin/python -m pip}"
PACKAGES=(open_clip_torch taming-transformers-rom1504 omegaconf ftfy wcwidth platformdirs)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$($PIP show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
        echo "gpu_wheels: $name is not installed in .venv; cannot pin its version" >&2
        exit 1
    fi
    pins+=("$name==$version")
done

rm -rf .whl
mkdir -p .whl
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

ls -l .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "pinned: ${pins[*]}"
echo "total: $total bytes ($(awk -v b="$total" 'BEGIN {printf "%.2f", b / 1048576}') MiB) in $(ls .whl/*.whl | wc -l) wheels"
if [ "$total" -gt $((16 * 1048576)) ]; then
    echo "gpu_wheels: over 16 MiB of wheels; the working tree that travels is limited to 64 MiB" >&2
    exit 1
fi
