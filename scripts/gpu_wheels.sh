#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh needs on a GPU machine (Python 3.12, torch/transformers/peft/
# accelerate/pyarrow/pandas/typer/pyyaml already there; see the device tool's KINDS.md), into .whl/.
# `--print`: list the pinned specs it would fetch, and fetch nothing.
# pydantic for chexrl's config; trl (and datasets, dill, multiprocess) for TRL's side of the check.
# Every wheel is pinned to the version in requirements/lock-cpu.txt: pydantic refuses to import beside a
# pydantic-core of another version, and TRL's side must be the TRL the CPU tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock-cpu.txt
PY=${PYTHON:-python3}

# `name==version` of one package as the lock pins it (names compared as PEP 503 normalises them).
locked() {
    local want line
    want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
    while IFS= read -r line; do
        [ "$(echo "${line%%==*}" | tr 'A-Z_.' 'a-z--')" = "$want" ] && { echo "$line"; return 0; }
    done < <(grep -E '^[A-Za-z0-9_.-]+==' "$LOCK")
    echo "gpu_wheels: $1 is not pinned in $LOCK" >&2
    return 1
}

specs=()
for name in pydantic pydantic-core annotated-types typing-inspection trl datasets dill multiprocess; do
    specs+=("$(locked "$name")")
done
if [ "${1:-}" = --print ]; then printf '%s\n' "${specs[@]}"; exit 0; fi  # what it would fetch
# .whl/ stays out of git (a worktree's .git is a file: ask git where its exclude list lives)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" .whl
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
for spec in "${specs[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec"
done
ls -la .whl
