#!/usr/bin/env bash
# deps-python.sh - Python references used only by tests and tools (never by
# the product): Hugging Face `tokenizers`, `transformers` on Debian's CPU
# torch, the official `openai` client. Idempotent: installs what is missing.
set -euo pipefail
PY=${PYTHON:-python3}

need=()
$PY -c 'import tokenizers' 2>/dev/null || need+=("tokenizers")
# the official OpenAI client drives sluice-frontend (tests/python/test_openai_client.py)
$PY -c 'import openai' 2>/dev/null || need+=("openai")
# jinja2 >= 3.1 renders chat templates as transformers does (tests/python/chat_template_ref.py)
$PY -c 'import jinja2, sys; sys.exit(tuple(map(int, jinja2.__version__.split(".")[:2])) < (3, 1))' \
  2>/dev/null || need+=("jinja2>=3.1")
if [ ${#need[@]} -gt 0 ]; then
  echo "deps-python: pip install ${need[*]}"
  $PY -m pip install -q --disable-pip-version-check "${need[@]}"
fi

# Hugging Face transformers reference for the model forward (tests/python/hf_ref.py).
# It runs on Debian's CPU torch (python3-torch 1.13, visible only to
# /usr/bin/python3) paired with transformers 4.45.2: the newest line that still
# imports on torch 1.13 and knows Qwen2 and llama3 rope scaling. PyPI's own
# torch wheels would pull gigabytes of CUDA libraries.
HF_PY=/usr/bin/python3
HF_TRANSFORMERS=4.45.2
if ! $HF_PY -c 'import torch' 2>/dev/null; then
  echo "deps-python: apt-get install python3-torch (CPU torch for the HF reference)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends python3-torch python3-pip
fi
if ! $HF_PY -c "import transformers, sys; sys.exit(transformers.__version__ != '$HF_TRANSFORMERS')" 2>/dev/null; then
  echo "deps-python: $HF_PY -m pip install transformers==$HF_TRANSFORMERS"
  $HF_PY -m pip install -q --disable-pip-version-check --break-system-packages \
    "transformers==$HF_TRANSFORMERS"
fi
