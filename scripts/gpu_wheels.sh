#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh needs on the lent GPU machine (Python 3.12, torch/transformers/peft/
# accelerate/pyarrow/pandas/typer/pyyaml already there; see the device tool's KINDS.md), into .whl/.
# pydantic for chexrl's config; trl (and datasets, dill, multiprocess) for TRL's side of the check.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
mkdir -p .whl
for spec in pydantic==2.14.* pydantic-core annotated-types typing-inspection trl==1.16.0 datasets dill multiprocess; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec"
done
ls -la .whl
