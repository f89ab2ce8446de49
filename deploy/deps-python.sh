#!/usr/bin/env bash
# deps-python.sh - Python references used only by tests and tools (never by
# the product): Hugging Face `tokenizers`, `transformers` on Debian's CPU
# torch, the official `openai` client. Idempotent: installs what is missing.
set -euo pipefail
PY=${PYTHON:-python3}

need=()
$PY -c 'import tokenizers' 2>/dev/null || need+=("tokenizers")
if [ ${#need[@]} -gt 0 ]; then
  echo "deps-python: pip install ${need[*]}"
  $PY -m pip install -q --disable-pip-version-check "${need[@]}"
fi
